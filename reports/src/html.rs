//! A self-contained HTML report: inline CSS and SVG charts, no scripts, no external assets.
use std::path::Path;

use trainlab_core::Record;

use crate::format::{format_value, markdown_table};
use crate::{ChartSpec, ReportError, chart_svg_string};

/// Escapes `&`, `<`, `>`, `"` and `'` for HTML text and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Display rows for records: headers `study, workload, case, backend, fidelity, metric, value, unit, 95% CI, seed`,
/// values formatted with [`format_value`] and the CI as `[low, high]` (empty when absent). Used by
/// [`HtmlReport::table_records`] and [`records_markdown`].
pub fn record_rows(records: &[Record]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let headers = vec![
        "study", "workload", "case", "backend", "fidelity", "metric", "value", "unit", "95% CI", "seed",
    ];
    let rows = records
        .iter()
        .map(|r| {
            let ci = match (r.ci_low, r.ci_high) {
                (Some(l), Some(h)) => format!("[{}, {}]", format_value(l), format_value(h)),
                _ => String::new(),
            };
            vec![
                r.study.clone(),
                r.workload.clone(),
                r.case.clone(),
                r.backend.clone(),
                r.fidelity.as_str().to_string(),
                r.metric.clone(),
                format_value(r.value),
                r.unit.symbol().to_string(),
                ci,
                r.seed.to_string(),
            ]
        })
        .collect();
    (headers, rows)
}

/// Records as a Markdown table (see [`record_rows`]), for terminal output.
pub fn records_markdown(records: &[Record]) -> String {
    let (headers, rows) = record_rows(records);
    markdown_table(&headers, &rows)
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1400px;margin:2em auto;\
padding:0 1em;color:#222;line-height:1.45}h1{border-bottom:2px solid #0072b2;padding-bottom:.2em}\
h2{margin-top:1.8em;color:#0b3c5d}table{border-collapse:collapse;margin:1em 0;font-size:.9em}\
th,td{border:1px solid #ccc;padding:.3em .6em;white-space:nowrap}td.wrap{white-space:normal;min-width:20em}th{background:#eef3f8;text-align:left}\
td.num{text-align:right;font-variant-numeric:tabular-nums}tr:nth-child(even) td{background:#fafafa}\
figure{margin:1em 0}figure svg{max-width:100%;height:auto;border:1px solid #eee}\
figcaption{font-size:.85em;color:#555}pre{background:#f5f5f5;padding:.6em;overflow-x:auto}\
.scroll{overflow-x:auto;max-width:100%}\
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,340px),1fr));gap:.8em}\
.grid figure{margin:0}img,svg{max-width:100%}";

/// Builder for one self-contained HTML file. Text is always escaped; charts are inlined as SVG.
///
/// ```no_run
/// # use trainlab_reports::*;
/// let mut r = HtmlReport::new("Study");
/// r.heading("Results").paragraph("Analytical vs simulated step time.");
/// r.table(&["case", "value"], &[vec!["a".to_string(), "1".to_string()]]);
/// r.write(std::path::Path::new("out/report.html")).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct HtmlReport {
    title: String,
    body: Vec<String>,
}

fn is_numeric(s: &str) -> bool {
    !s.is_empty() && s.trim().parse::<f64>().is_ok()
}

impl HtmlReport {
    /// An empty report with a title (shown as the page title and a top heading).
    pub fn new(title: impl Into<String>) -> Self {
        HtmlReport {
            title: title.into(),
            body: Vec::new(),
        }
    }

    /// A section heading (`<h2>`).
    pub fn heading(&mut self, text: &str) -> &mut Self {
        self.body.push(format!("<h2>{}</h2>", escape_html(text)));
        self
    }

    /// A paragraph of plain text (escaped).
    pub fn paragraph(&mut self, text: &str) -> &mut Self {
        self.body.push(format!("<p>{}</p>", escape_html(text)));
        self
    }

    /// Preformatted text (escaped), e.g. a command line or a configuration.
    pub fn preformatted(&mut self, text: &str) -> &mut Self {
        self.body.push(format!("<pre>{}</pre>", escape_html(text)));
        self
    }

    /// A table; cells that parse as numbers are right-aligned. Short rows are padded with empty cells.
    pub fn table<H: AsRef<str>, C: AsRef<str>>(&mut self, headers: &[H], rows: &[Vec<C>]) -> &mut Self {
        let mut s = String::from("<div class=\"scroll\"><table>\n<thead><tr>");
        for h in headers {
            s.push_str(&format!("<th>{}</th>", escape_html(h.as_ref())));
        }
        s.push_str("</tr></thead>\n<tbody>\n");
        for r in rows {
            s.push_str("<tr>");
            for i in 0..headers.len().max(r.len()) {
                let c = r.get(i).map(|c| c.as_ref()).unwrap_or("");
                // Short cells stay on one line (the table scrolls in its box); prose wraps.
                let class = if is_numeric(c) {
                    " class=\"num\""
                } else if c.chars().count() > 40 {
                    " class=\"wrap\""
                } else {
                    ""
                };
                s.push_str(&format!("<td{class}>{}</td>", escape_html(c)));
            }
            s.push_str("</tr>\n");
        }
        s.push_str("</tbody>\n</table></div>");
        self.body.push(s);
        self
    }

    /// A table of records with the columns of [`record_rows`].
    pub fn table_records(&mut self, records: &[Record]) -> &mut Self {
        let (headers, rows) = record_rows(records);
        self.table(&headers, &rows)
    }

    /// An inline SVG chart with its title as caption.
    pub fn chart(&mut self, spec: &ChartSpec) -> Result<&mut Self, ReportError> {
        let svg = chart_svg_string(spec)?;
        self.body.push(format!(
            "<figure>\n{svg}\n<figcaption>{}</figcaption>\n</figure>",
            escape_html(&spec.title)
        ));
        Ok(self)
    }

    /// Small multiples: several charts side by side in a responsive grid (one column on a narrow screen), each
    /// with its title as caption.
    pub fn chart_grid(&mut self, specs: &[ChartSpec]) -> Result<&mut Self, ReportError> {
        let mut s = String::from("<div class=\"grid\">");
        for spec in specs {
            let svg = chart_svg_string(spec)?;
            s.push_str(&format!(
                "\n<figure>\n{svg}\n<figcaption>{}</figcaption>\n</figure>",
                escape_html(&spec.title)
            ));
        }
        s.push_str("\n</div>");
        self.body.push(s);
        Ok(self)
    }

    /// The complete HTML document.
    pub fn render(&self) -> String {
        let t = escape_html(&self.title);
        let mut s = format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{t}</title>\n\
             <style>{CSS}</style>\n</head>\n<body>\n<h1>{t}</h1>\n"
        );
        for part in &self.body {
            s.push_str(part);
            s.push('\n');
        }
        s.push_str("</body>\n</html>\n");
        s
    }

    /// Writes the document to `path` (creating parent directories).
    pub fn write(&self, path: &Path) -> Result<(), ReportError> {
        if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).map_err(|e| ReportError::io(d, e))?;
        }
        crate::write_atomic(path, self.render().as_bytes())
    }
}
