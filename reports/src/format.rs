//! Number formatting and Markdown tables.

/// Formats a value compactly for tables and axis ticks: `0`, up to 4 significant digits between 1e-3 and 1e5
/// (`0.1235`, `1234`, `12346`), scientific notation outside (`1.235e9`); `NaN`, `inf`, `-inf` as such.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".to_string() } else { "-inf".to_string() };
    }
    if v == 0.0 {
        return "0".to_string();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        let s = format!("{v:.3e}");
        // Trim trailing zeros of the mantissa: 1.500e9 -> 1.5e9, 1.000e9 -> 1e9.
        return match s.split_once('e') {
            Some((m, e)) => {
                let m = if m.contains('.') {
                    m.trim_end_matches('0').trim_end_matches('.')
                } else {
                    m
                };
                format!("{m}e{e}")
            }
            None => s,
        };
    }
    let digits = (3 - a.log10().floor() as i32).clamp(0, 7) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// `v` rounded to a whole number with thousands separators: `535,770`, `-1,234,567`.
pub fn format_thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0.0 && digits != "0" {
        format!("-{out}")
    } else {
        out
    }
}

fn md_cell(s: &str) -> String {
    s.replace('\\', "\\\\").replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// Renders a GitHub-flavoured Markdown table. Cells are escaped (`|`, `\`, newlines); rows shorter than the header
/// are padded with empty cells and longer rows are truncated, so the output is always a well-formed table. Columns
/// are padded to equal width for terminal reading.
pub fn markdown_table<H: AsRef<str>, C: AsRef<str>>(headers: &[H], rows: &[Vec<C>]) -> String {
    let n = headers.len();
    let head: Vec<String> = headers.iter().map(|h| md_cell(h.as_ref())).collect();
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            (0..n)
                .map(|i| r.get(i).map(|c| md_cell(c.as_ref())).unwrap_or_default())
                .collect()
        })
        .collect();
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count().max(3)).collect();
    for r in &body {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::from("|");
        for (c, w) in cells.iter().zip(&width) {
            let pad = w - c.chars().count();
            s.push(' ');
            s.push_str(c);
            s.extend(std::iter::repeat_n(' ', pad));
            s.push_str(" |");
        }
        s.push('\n');
        s
    };
    let mut out = line(&head);
    out.push('|');
    for w in &width {
        out.push_str(&"-".repeat(w + 2));
        out.push('|');
    }
    out.push('\n');
    for r in &body {
        out.push_str(&line(r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(0.123456), "0.1235");
        assert_eq!(format_value(1234.4), "1234");
        assert_eq!(format_value(12.5), "12.5");
        assert_eq!(format_value(1.5e9), "1.5e9");
        assert_eq!(format_value(1e9), "1e9");
        assert_eq!(format_value(-2.5e-5), "-2.5e-5");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::NEG_INFINITY), "-inf");
    }

    #[test]
    fn markdown_is_well_formed() {
        let t = markdown_table(&["a", "b|c"], &[vec!["1", "x|y"], vec!["2"]]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[1].starts_with("|---"));
        assert!(t.contains("b\\|c") && t.contains("x\\|y"));
        // Every line has the same number of unescaped separators.
        let seps = |l: &str| l.replace("\\|", "").matches('|').count();
        assert!(lines.iter().all(|l| seps(l) == 3));
    }
}
