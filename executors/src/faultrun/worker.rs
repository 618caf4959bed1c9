//! The worker process of the fault-injection run: compute steps, a real ring all-reduce over loopback TCP, a
//! checkpoint to disk, and a timestamp line to the monitor at every collective entry and exit.
//!
//! Wire protocol (text lines): worker -> monitor `H <rank> <port> <pid>` once, then `E <step> <t>` / `X <step> <t>`
//! around each all-reduce (t = seconds since the Unix epoch, one clock on one machine), `P <step> <sent> <received>`
//! after each chunk of the ring (chunks written to the right neighbour, chunks consumed from the left), and
//! `C <step> <seconds>` after
//! a checkpoint write; monitor -> worker `P <port_0> ... <port_{n-1}>` with the ring ports.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Parsed worker arguments (`key=value` words).
#[derive(Debug, Clone)]
pub(crate) struct WorkerArgs {
    pub rank: usize,
    pub world: usize,
    pub monitor: String,
    pub work: u64,
    pub len: usize,
    pub steps: u64,
    pub ckpt: PathBuf,
    pub every: u64,
}

impl WorkerArgs {
    pub(crate) fn to_args(&self) -> Vec<String> {
        vec![
            format!("rank={}", self.rank),
            format!("world={}", self.world),
            format!("monitor={}", self.monitor),
            format!("work={}", self.work),
            format!("len={}", self.len),
            format!("steps={}", self.steps),
            format!("ckpt={}", self.ckpt.display()),
            format!("every={}", self.every),
        ]
    }

    fn parse(args: &[String]) -> Result<Self, String> {
        let get = |k: &str| -> Result<&str, String> {
            args.iter()
                .find_map(|a| a.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
                .ok_or_else(|| format!("missing {k}=..."))
        };
        let num = |k: &str| -> Result<u64, String> { get(k)?.parse::<u64>().map_err(|e| format!("{k}: {e}")) };
        Ok(WorkerArgs {
            rank: num("rank")? as usize,
            world: num("world")? as usize,
            monitor: get("monitor")?.to_string(),
            work: num("work")?,
            len: num("len")? as usize,
            steps: num("steps")?,
            ckpt: PathBuf::from(get("ckpt")?),
            every: num("every")?.max(1),
        })
    }
}

/// The throttle file of the worker with process id `pid` in the run directory `dir`: while it exists, holding a
/// factor `x >= 1`, the worker stretches each compute phase to `x` times its measured wall time.
pub(crate) fn throttle_path(dir: &std::path::Path, pid: u32) -> PathBuf {
    dir.join(format!("throttle-{pid}"))
}

/// The throttle factor in force for this process (1 when there is no throttle file or it does not parse).
fn throttle_factor(path: &std::path::Path) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|x| x.is_finite() && *x >= 1.0)
        .unwrap_or(1.0)
}

pub(crate) fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A fixed amount of floating-point work (so that throttling the process really slows it): `work` passes of a
/// multiply-add over the gradient buffer. Returns the "gradient" of this step.
pub(crate) fn compute(params: &[f32], work: u64, step: u64, rank: usize, out: &mut [f32]) {
    let s = (step as f32 + 1.0) * 1e-3 + rank as f32 * 1e-4;
    for (o, p) in out.iter_mut().zip(params) {
        *o = p * 0.5 + s;
    }
    for _ in 0..work {
        for o in out.iter_mut() {
            *o = (*o * 0.999_9 + 1e-6).min(1e3);
        }
    }
}

fn f32s_to_bytes(xs: &[f32], buf: &mut Vec<u8>) {
    buf.clear();
    for x in xs {
        buf.extend_from_slice(&x.to_le_bytes());
    }
}

/// In-place ring all-reduce (sum): reduce-scatter then all-gather, `2(n-1)` chunk exchanges.
/// `progress(sent, received)` is called after every chunk exchange (the per-connection counters C4D reads).
pub(crate) fn ring_allreduce(
    v: &mut [f32],
    rank: usize,
    n: usize,
    right: &mut TcpStream,
    left: &mut TcpStream,
    mut progress: impl FnMut(u64, u64) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if n <= 1 {
        return Ok(());
    }
    let len = v.len();
    let bounds = |c: usize| (c * len / n, (c + 1) * len / n);
    let mut sbuf = Vec::new();
    let mut rbuf = vec![0u8; (len / n + 1) * 4];
    for s in 0..2 * (n - 1) {
        let send_c = (rank + 2 * n - s) % n;
        let recv_c = (rank + 2 * n - s - 1) % n;
        let (a, b) = bounds(send_c);
        f32s_to_bytes(&v[a..b], &mut sbuf);
        right.write_all(&sbuf)?;
        progress(s as u64 + 1, s as u64)?;
        let (a, b) = bounds(recv_c);
        let bytes = &mut rbuf[..(b - a) * 4];
        left.read_exact(bytes)?;
        for (i, x) in v[a..b].iter_mut().enumerate() {
            let y = f32::from_le_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]);
            if s < n - 1 {
                *x += y;
            } else {
                *x = y;
            }
        }
        progress(s as u64 + 1, s as u64 + 1)?;
    }
    Ok(())
}

fn load_ckpt(path: &std::path::Path, len: usize) -> Option<(u64, Vec<f32>)> {
    let b = std::fs::read(path).ok()?;
    if b.len() != 8 + 4 * len {
        return None;
    }
    let step = u64::from_le_bytes(b[..8].try_into().ok()?);
    let v = b[8..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some((step, v))
}

fn save_ckpt(path: &std::path::Path, step: u64, v: &[f32]) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(8 + 4 * v.len());
    b.extend_from_slice(&step.to_le_bytes());
    for x in v {
        b.extend_from_slice(&x.to_le_bytes());
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&b)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)
}

fn run(a: &WorkerArgs) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    let mut mon = TcpStream::connect(&a.monitor).map_err(io)?;
    mon.set_nodelay(true).ok();
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io)?;
    let port = listener.local_addr().map_err(io)?.port();
    writeln!(mon, "H {} {} {}", a.rank, port, std::process::id()).map_err(io)?;
    let mut line = String::new();
    BufReader::new(mon.try_clone().map_err(io)?)
        .read_line(&mut line)
        .map_err(io)?;
    let ports: Vec<u16> = line.split_whitespace().skip(1).filter_map(|p| p.parse().ok()).collect();
    if ports.len() != a.world {
        return Err(format!("bad peer list {line:?}"));
    }
    let (mut right, mut left) = if a.world > 1 {
        let target = format!("127.0.0.1:{}", ports[(a.rank + 1) % a.world]);
        let t0 = Instant::now();
        let right = loop {
            match TcpStream::connect(&target) {
                Ok(s) => break s,
                Err(e) if t0.elapsed() > Duration::from_secs(10) => return Err(e.to_string()),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        right.set_nodelay(true).ok();
        let (left, _) = listener.accept().map_err(io)?;
        (Some(right), Some(left))
    } else {
        (None, None)
    };
    let ckpt = a.ckpt.join("ckpt.bin");
    let (start, mut params) = load_ckpt(&ckpt, a.len).unwrap_or((0, vec![0.1; a.len]));
    let mut grad = vec![0.0f32; a.len];
    let throttle = throttle_path(&a.ckpt, std::process::id());
    for k in start..a.steps {
        let t0 = Instant::now();
        compute(&params, a.work, k, a.rank, &mut grad);
        let x = throttle_factor(&throttle);
        if x > 1.0 {
            // A throttled device: the host waits (x - 1) times the compute phase before the collective.
            std::thread::sleep(t0.elapsed().mul_f64(x - 1.0));
        }
        writeln!(mon, "E {k} {:.6}", now_s()).map_err(io)?;
        if let (Some(r), Some(l)) = (right.as_mut(), left.as_mut()) {
            let m = &mut mon;
            ring_allreduce(&mut grad, a.rank, a.world, r, l, |sent, recv| {
                writeln!(m, "P {k} {sent} {recv}")
            })
            .map_err(io)?;
        }
        writeln!(mon, "X {k} {:.6}", now_s()).map_err(io)?;
        let inv = 1.0 / a.world as f32;
        for (p, g) in params.iter_mut().zip(&grad) {
            *p -= 1e-3 * g * inv;
        }
        if a.rank == 0 && (k + 1) % a.every == 0 {
            let t = Instant::now();
            save_ckpt(&ckpt, k + 1, &params).map_err(io)?;
            writeln!(mon, "C {} {:.6}", k + 1, t.elapsed().as_secs_f64()).map_err(io)?;
        }
    }
    Ok(())
}

/// Entry point of the hidden worker subcommand. Returns the process exit code.
pub fn worker_main(args: &[String]) -> i32 {
    // Die with the monitor: no orphans even if the monitor is killed without cleaning up.
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number has no memory-safety preconditions.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    match WorkerArgs::parse(args).and_then(|a| run(&a)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("c4-worker: {e}");
            1
        }
    }
}
