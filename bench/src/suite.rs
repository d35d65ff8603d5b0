//! The runner: starts each server pinned to CPU 0 and the load generator on CPU 1, runs the
//! plan for every server, interleaved (A B C … A B C …) for the given repetitions, and writes
//! `results.json` and `results.md` (medians, min–max, ratios tidings ÷ peer, targets).
//!
//! `tidings-bench suite --root DIR --out DIR [--reps 5] [--quick] [--only a,b]`

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

/// A server under test.
struct Server {
    name: String,
    kind: &'static str,
    path: &'static str,
    cmd: Vec<String>,
    /// The first file the command needs (missing: the peer is unavailable).
    needs: PathBuf,
    why_missing: &'static str,
}

fn servers(root: &Path, bin: &Path) -> Vec<Server> {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let node_dir = root.join("bench/peers/node");
    let bun = node_dir.join("node_modules/bun/bin/bun.exe");
    let py = root.join("bench/peers/python/.venv/bin/python");
    vec![
        Server {
            name: "tidings".into(),
            kind: "signalr",
            path: "/bench",
            cmd: vec![
                s(&bin.join("examples/benchhub")),
                "--workers".into(),
                "1".into(),
            ],
            needs: bin.join("examples/benchhub"),
            why_missing: "cargo build --release --example benchhub",
        },
        Server {
            name: "floor".into(),
            kind: "raw",
            path: "/",
            cmd: vec![s(&bin.join("floor"))],
            needs: bin.join("floor"),
            why_missing: "bench crate not built",
        },
        Server {
            name: "bun".into(),
            kind: "raw",
            path: "/",
            cmd: vec![s(&bun), s(&node_dir.join("bun-server.js"))],
            needs: bun.clone(),
            why_missing: "npm ci in bench/peers/node failed (bun)",
        },
        Server {
            name: "ws".into(),
            kind: "raw",
            path: "/",
            cmd: vec!["node".into(), s(&node_dir.join("ws-server.js"))],
            needs: node_dir.join("node_modules/ws"),
            why_missing: "npm ci in bench/peers/node failed (ws)",
        },
        Server {
            name: "socketio".into(),
            kind: "sio",
            path: "/",
            cmd: vec!["node".into(), s(&node_dir.join("sio-server.js"))],
            needs: node_dir.join("node_modules/socket.io"),
            why_missing: "npm ci in bench/peers/node failed (socket.io)",
        },
        Server {
            name: "socketioxide".into(),
            kind: "sio",
            path: "/",
            cmd: vec![s(&bin.join("sox"))],
            needs: bin.join("sox"),
            why_missing: "bench crate not built",
        },
        Server {
            name: "aiosignalr".into(),
            kind: "signalr",
            path: "/hub",
            cmd: vec![s(&py), s(&root.join("bench/peers/python/aios_server.py"))],
            needs: py.clone(),
            why_missing: "pip install aiosignalr into bench/peers/python/.venv failed",
        },
    ]
}

/// One client run against a fresh server: protocol, CPU of the client, phases.
struct Session {
    proto: &'static str,
    client_cpu: u32,
    phases: Vec<(String, String)>,
    /// Runs against the previous session's server process instead of a fresh one.
    same_server: bool,
}

fn ph(name: &str, spec: &str) -> (String, String) {
    (name.to_owned(), spec.to_owned())
}

/// The plan for one server in repetition `rep` (0-based).
///
/// Fan-outs that saturate a slow server leave it a backlog of seconds (64 broadcasts × 10 000
/// subscribers), so they end their session: the server is stopped rather than waited for, and
/// the echo workloads run on a fresh one.
fn plan(server: &str, quick: bool, rep: usize) -> Vec<Session> {
    let (big, mid, secs) = if quick {
        (1000, 200, "0.5")
    } else {
        (10_000, 1000, "0.8")
    };
    let short = if quick { "0.3" } else { "0.5" };
    let max = if quick { 2000 } else { 19_900 };
    let subs = if server == "aiosignalr" { mid } else { big };
    let tag = |n: usize| {
        if n >= 1000 {
            format!("{}k", n / 1000)
        } else {
            n.to_string()
        }
    };
    // Node ws is in no target: three repetitions of five, to fit in 10 minutes.
    if server == "ws" && !rep.is_multiple_of(2) {
        return Vec::new();
    }
    // 1 KiB fan-out only where the 20 B backlog is gone within the phase (tidings, Bun).
    let slow = !(server.starts_with("tidings") || server == "bun");
    let mut fan = vec![
        ph(
            &format!("connect-{}", tag(subs)),
            &format!("connect:{subs}"),
        ),
        ph(&format!("fanlat-{}", tag(subs)), &format!("fanlat:{short}")),
        ph(
            &format!("fanout-{}-20B", tag(subs)),
            &format!("fanout:64:20:{secs}"),
        ),
    ];
    if !slow {
        fan.push(ph(
            &format!("fanout-{}-1KiB", tag(subs)),
            &format!("fanout:64:1024:{short}"),
        ));
    }
    let mut echo = vec![
        ph("echo-1", &format!("echo:1:{short}")),
        ph("echo-100", &format!("echo:100:{short}")),
    ];
    // 1 000-connection echo against the SignalR peer, socket.io and the floor (time budget).
    if server.starts_with("tidings") || matches!(server, "floor" | "socketio" | "aiosignalr") {
        echo.push(ph(
            &format!("echo-{}", tag(mid)),
            &format!("echo:{mid}:{short}"),
        ));
    }
    echo.push(ph("pipe-100x16", &format!("pipe:100:16:{short}")));
    if server == "ws" {
        // Node ws: fan-out and same-core echo only (time budget).
        echo.clear();
    }
    if server == "aiosignalr" || server.starts_with("tidings") {
        // The SignalR-only transports: long polling (100 clients) and SSE (1 000).
        echo.extend([
            ph("lp-100", "lp:100"),
            ph("fanout-lp-100", &format!("fanout:64:20:{short}")),
            ph(&format!("sse-{}", tag(mid)), &format!("sse:{mid}")),
            ph(
                &format!("fanout-sse-{}", tag(mid)),
                &format!("fanout:64:20:{short}"),
            ),
        ]);
    }
    if server.starts_with("tidings") {
        // WebSockets at the same 1 000 (aiosignalr's main fan-out already is that).
        echo.extend([
            ph(&format!("ws-{}", tag(mid)), &format!("connect:{mid}")),
            ph(
                &format!("fanout-ws-{}", tag(mid)),
                &format!("fanout:64:20:{short}"),
            ),
        ]);
    }
    let mut sessions = vec![
        Session {
            proto: "json",
            client_cpu: 1,
            phases: fan,
            same_server: false,
        },
        Session {
            proto: "json",
            client_cpu: 0,
            phases: vec![ph("echo-1-samecore", &format!("echo:1:{short}"))],
            same_server: false,
        },
    ];
    if !echo.is_empty() {
        sessions.push(Session {
            proto: "json",
            client_cpu: 1,
            phases: echo,
            same_server: true,
        });
    }
    // MessagePack in every other repetition (medians of 3), to fit in 10 minutes.
    if server.starts_with("tidings") && rep.is_multiple_of(2) {
        sessions.push(Session {
            proto: "msgpack",
            client_cpu: 1,
            phases: vec![
                ph("echo-1", &format!("echo:1:{short}")),
                ph("pipe-100x16", &format!("pipe:100:16:{short}")),
                ph(&format!("connect-{}", tag(big)), &format!("connect:{big}")),
                ph(
                    &format!("fanout-{}-20B", tag(big)),
                    &format!("fanout:64:20:{short}"),
                ),
            ],
            same_server: false,
        });
    }
    // 19 900 connections once (first repetition only), for tidings and the raw floors.
    if rep == 0 && (server.starts_with("tidings") || server == "floor" || server == "bun") {
        sessions.push(Session {
            proto: "json",
            client_cpu: 1,
            phases: vec![
                ph("connect-max", &format!("connect:{max}")),
                ph("fanlat-max", &format!("fanlat:{short}")),
                ph("fanout-max-20B", &format!("fanout:64:20:{secs}")),
            ],
            same_server: false,
        });
    }
    sessions
}

struct Running {
    child: Child,
    pid: u32,
}

fn start(server: &Server, port: u16, log: &Path) -> Result<Running, String> {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg("0");
    cmd.args(&server.cmd);
    match server.name.as_str() {
        n if n.starts_with("tidings") || n == "floor" || n == "socketioxide" => {
            cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
        }
        _ => {
            cmd.arg(port.to_string());
        }
    }
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", server.name))?;
    let pid = child.id();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut told = false;
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if !told && line.contains("listening on") {
                let _ = tx.send(());
                told = true;
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(()) => Ok(Running { child, pid }),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "{} did not start (see {})",
                server.name,
                log.display()
            ))
        }
    }
}

fn stop(mut r: Running) {
    let _ = r.child.kill();
    let _ = r.child.wait();
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One measured row: a phase of one session of one server in one repetition.
#[derive(Serialize, Clone)]
struct Row {
    server: String,
    proto: String,
    rep: usize,
    loadavg: String,
    #[serde(flatten)]
    data: Value,
}

fn median_min_max(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Some((m, v[0], v[v.len() - 1]))
}

type Key = (String, String, String); // (phase, proto, server)

fn summarize(rows: &[Row]) -> BTreeMap<Key, BTreeMap<String, (f64, f64, f64)>> {
    let mut groups: BTreeMap<Key, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        let phase = r.data["phase"].as_str().unwrap_or("").to_owned();
        if phase == "close" {
            continue;
        }
        groups
            .entry((phase, r.proto.clone(), r.server.clone()))
            .or_default()
            .push(r);
    }
    let metrics = [
        "rate",
        "cpu_us_per_msg",
        "p50_us",
        "p99_us",
        "p999_us",
        "copy_p50_us",
        "copy_p99_us",
        "rss_per_conn",
        "pss_per_conn",
        "errors",
        "conns",
    ];
    let mut out = BTreeMap::new();
    for (k, rs) in groups {
        let mut m = BTreeMap::new();
        for metric in metrics {
            let vals: Vec<f64> = rs.iter().filter_map(|r| r.data[metric].as_f64()).collect();
            if metric == "errors" {
                let sum: f64 = vals.iter().sum();
                m.insert(metric.to_owned(), (sum, sum, sum));
            } else if let Some(s) = median_min_max(vals) {
                m.insert(metric.to_owned(), s);
            }
        }
        out.insert(k, m);
    }
    out
}

fn fmt(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1} k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

const ORDER: [&str; 7] = [
    "tidings",
    "floor",
    "bun",
    "ws",
    "socketio",
    "socketioxide",
    "aiosignalr",
];

/// The headline metric of a phase and whether larger is better.
fn headline(phase: &str) -> (&'static str, bool) {
    if phase.starts_with("connect") || phase.starts_with("ws-") {
        ("rss_per_conn", false)
    } else if phase.starts_with("sse-") || phase.starts_with("lp-") {
        ("rate", true)
    } else if phase.starts_with("fanlat") {
        ("p99_us", false)
    } else {
        ("rate", true)
    }
}

fn markdown(
    summary: &BTreeMap<Key, BTreeMap<String, (f64, f64, f64)>>,
    unavailable: &[(String, String)],
    meta: &Value,
) -> String {
    let mut md = String::new();
    let get = |phase: &str, proto: &str, server: &str, metric: &str| {
        summary
            .get(&(phase.to_owned(), proto.to_owned(), server.to_owned()))
            .and_then(|m| m.get(metric))
            .copied()
    };
    md.push_str(&format!(
        "Run: {} · reps {} · load average before {} / after {} · {}\n\n",
        meta["date"].as_str().unwrap_or(""),
        meta["reps"],
        meta["loadavg_before"].as_str().unwrap_or(""),
        meta["loadavg_after"].as_str().unwrap_or(""),
        meta["machine"].as_str().unwrap_or(""),
    ));
    // Targets.
    let ratio = |phase: &str, metric: &str, a: &str, pa: &str, b: &str, pb: &str| match (
        get(phase, pa, a, metric),
        get(phase, pb, b, metric),
    ) {
        (Some(x), Some(y)) if y.0 != 0.0 => Some(x.0 / y.0),
        _ => None,
    };
    let mut t = String::from("| target | measured (median of reps) | met? |\n|---|---|---|\n");
    let mut row = |name: &str, value: Option<f64>, goal: f64, more_is_better: bool, unit: &str| {
        let (v, ok) = match value {
            Some(v) => (
                format!("{}{unit}", fmt(v)),
                if more_is_better { v >= goal } else { v <= goal },
            ),
            None => ("n/a".into(), false),
        };
        t.push_str(&format!(
            "| {name} | {v} | {} |\n",
            if value.is_none() {
                "n/a"
            } else if ok {
                "yes"
            } else {
                "**no**"
            }
        ));
    };
    let f10 = "fanout-10k-20B";
    row(
        "fan-out 10k ≥ 3× socket.io",
        ratio(f10, "rate", "tidings", "json", "socketio", "json"),
        3.0,
        true,
        "×",
    );
    row(
        "fan-out 10k ≥ 2× socketioxide",
        ratio(f10, "rate", "tidings", "json", "socketioxide", "json"),
        2.0,
        true,
        "×",
    );
    row(
        "fan-out 10k ≥ 1.5× floor",
        ratio(f10, "rate", "tidings", "json", "floor", "json"),
        1.5,
        true,
        "×",
    );
    row(
        "fan-out 10k ≥ 1.0× Bun (aim)",
        ratio(f10, "rate", "tidings", "json", "bun", "json"),
        1.0,
        true,
        "×",
    );
    row(
        "fan-out 1k ≥ 10× aiosignalr",
        match (
            get("fanout-ws-1k", "json", "tidings", "rate"),
            get("fanout-1k-20B", "json", "aiosignalr", "rate"),
        ) {
            (Some(a), Some(b)) if b.0 > 0.0 => Some(a.0 / b.0),
            _ => None,
        },
        10.0,
        true,
        "×",
    );
    row(
        "idle memory ≤ 4 KB per WS connection (10k, RSS delta)",
        get("connect-10k", "json", "tidings", "rss_per_conn").map(|v| v.0 / 1000.0),
        4.0,
        false,
        " KB",
    );
    row(
        "idle memory ≤ 4 KB per WS connection (19.9k, RSS delta)",
        get("connect-max", "json", "tidings", "rss_per_conn").map(|v| v.0 / 1000.0),
        4.0,
        false,
        " KB",
    );
    row(
        "same-core echo ≥ 0.8× floor",
        ratio(
            "echo-1-samecore",
            "rate",
            "tidings",
            "json",
            "floor",
            "json",
        ),
        0.8,
        true,
        "×",
    );
    row(
        "SSE fan-out ≥ 0.8× WS (1k)",
        match (
            get("fanout-sse-1k", "json", "tidings", "rate"),
            get("fanout-ws-1k", "json", "tidings", "rate"),
        ) {
            (Some(a), Some(b)) if b.0 > 0.0 => Some(a.0 / b.0),
            _ => None,
        },
        0.8,
        true,
        "×",
    );
    row(
        "long polling ≥ 5× aiosignalr (100 clients)",
        ratio(
            "fanout-lp-100",
            "rate",
            "tidings",
            "json",
            "aiosignalr",
            "json",
        ),
        5.0,
        true,
        "×",
    );
    row(
        "MsgPack fan-out ≥ 1.0× JSON (10k, 20 B)",
        ratio(f10, "rate", "tidings", "msgpack", "tidings", "json"),
        1.0,
        true,
        "×",
    );
    let max_conns = get("connect-max", "json", "tidings", "conns").map(|v| v.1);
    let max_errors = get("connect-max", "json", "tidings", "errors").map(|v| v.0);
    t.push_str(&format!(
        "| 19 900 connections in one process, 0 errors | min {} connections, {} errors over all reps | {} |\n",
        max_conns.map(fmt).unwrap_or("n/a".into()),
        max_errors.map(fmt).unwrap_or("n/a".into()),
        if max_conns.is_some_and(|c| c >= 19_900.0) && max_errors == Some(0.0) { "yes" } else { "**no**" }
    ));
    md.push_str("### Targets (ratios within this run)\n\n");
    md.push_str(&t);
    // Everything, per phase.
    let mut phases: Vec<(String, String)> = summary
        .keys()
        .map(|(p, proto, _)| (p.clone(), proto.clone()))
        .collect();
    phases.dedup();
    phases.sort();
    phases.dedup();
    md.push_str("\n### All measurements: median [min–max]\n\n");
    md.push_str("Rates are deliveries (fan-out), round trips (echo), connections (connect) or broadcasts (fanlat) per second; cpu = server CPU-µs per delivered message (per connection for connect); mem = server RSS delta per connection.\n\n");
    md.push_str("| phase | proto | server | rate | cpu µs/msg | p50 µs | p99 µs | p99.9 µs | mem B/conn | Pss B/conn | tidings ÷ this | errors |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (phase, proto) in &phases {
        let (metric, more) = headline(phase);
        let mut names: Vec<String> = ORDER.iter().map(|s| s.to_string()).collect();
        for (_, _, srv) in summary.keys() {
            if !names.contains(srv) {
                names.insert(1, srv.clone());
            }
        }
        for server in names.iter().map(String::as_str) {
            let Some(m) = summary.get(&(phase.clone(), proto.clone(), server.to_owned())) else {
                continue;
            };
            let cell = |k: &str| {
                m.get(k)
                    .map(|(med, lo, hi)| {
                        if lo == hi {
                            fmt(*med)
                        } else {
                            format!("{} [{}–{}]", fmt(*med), fmt(*lo), fmt(*hi))
                        }
                    })
                    .unwrap_or_default()
            };
            let r = if server == "tidings" {
                String::new()
            } else {
                match (get(phase, proto, "tidings", metric), m.get(metric)) {
                    (Some(a), Some(b)) if b.0 != 0.0 && a.0 != 0.0 => {
                        let x = if more { a.0 / b.0 } else { b.0 / a.0 };
                        format!("{} ({})", fmt(x), if more { metric } else { "inverse" })
                    }
                    _ => String::new(),
                }
            };
            md.push_str(&format!(
                "| {phase} | {proto} | {server} | {} | {} | {} | {} | {} | {} | {} | {r} | {} |\n",
                cell("rate"),
                cell("cpu_us_per_msg"),
                cell("p50_us"),
                cell("p99_us"),
                cell("p999_us"),
                cell("rss_per_conn"),
                cell("pss_per_conn"),
                m.get("errors").map(|e| fmt(e.0)).unwrap_or_default(),
            ));
        }
    }
    md.push_str("\n`tidings ÷ this`: for rates, tidings' median over the peer's (above 1: tidings ahead); for memory and latency (`inverse`), the peer's over tidings' (above 1: tidings smaller).\n");
    if !unavailable.is_empty() {
        md.push_str("\n### Peers that could not run\n\n");
        for (n, why) in unavailable {
            md.push_str(&format!("- {n}: {why}\n"));
        }
    }
    md
}

pub fn main(args: &[String]) -> std::io::Result<()> {
    let mut root = PathBuf::from(".");
    let mut out = PathBuf::from("target/bench");
    let mut reps = 5usize;
    let mut quick = false;
    let mut only: Option<Vec<String>> = None;
    let mut extra: Vec<(String, PathBuf)> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--root" => root = it.next().map(PathBuf::from).unwrap_or(root),
            "--out" => out = it.next().map(PathBuf::from).unwrap_or(out),
            "--reps" => reps = it.next().and_then(|v| v.parse().ok()).unwrap_or(reps),
            "--quick" => quick = true,
            "--only" => only = it.next().map(|v| v.split(',').map(str::to_owned).collect()),
            "--extra" => {
                // NAME=PATH: another build of the tidings server, run like tidings (A/B).
                if let Some((n, p)) = it.next().and_then(|v| v.split_once('=')) {
                    extra.push((n.to_owned(), PathBuf::from(p)));
                }
            }
            other => eprintln!("ignoring {other}"),
        }
    }
    std::fs::create_dir_all(&out)?;
    let bin = root.join("target/release");
    let me = std::env::current_exe()?;
    let mut all = servers(&root, &bin);
    for (name, path) in extra {
        all.insert(
            1,
            Server {
                name,
                kind: "signalr",
                path: "/bench",
                cmd: vec![
                    path.to_string_lossy().into_owned(),
                    "--workers".into(),
                    "1".into(),
                ],
                needs: path,
                why_missing: "--extra binary not found",
            },
        );
    }
    let mut unavailable = Vec::new();
    let mut active = Vec::new();
    for s in all {
        if only.as_ref().is_some_and(|o| !o.contains(&s.name)) {
            continue;
        }
        if s.needs.exists() {
            active.push(s);
        } else {
            eprintln!("{}: unavailable ({})", s.name, s.why_missing);
            unavailable.push((s.name.clone(), s.why_missing.to_owned()));
        }
    }
    let started = Instant::now();
    let load_before = loadavg();
    let log = out.join("servers.log");
    let _ = std::fs::remove_file(&log);
    let mut rows: Vec<Row> = Vec::new();
    let mut port: u16 = 21_000;
    let mut src_base: u32 = (std::process::id() % 31) * 8;
    let mut jsonl = std::fs::File::create(out.join("results.jsonl"))?;
    for rep in 0..reps {
        // Rotate the order so that no server always runs first or last.
        let n = active.len();
        for i in 0..n {
            let server = &active[(i + rep) % n];
            let mut current: Option<(Running, u16)> = None;
            for session in plan(&server.name, quick, rep) {
                src_base = (src_base + 8) % 248;
                if !session.same_server || current.is_none() {
                    if let Some((r, _)) = current.take() {
                        stop(r);
                    }
                    port += 1;
                    match start(server, port, &log) {
                        Ok(r) => current = Some((r, port)),
                        Err(e) => {
                            eprintln!("{e}");
                            if !unavailable.iter().any(|(n, _)| *n == server.name) {
                                unavailable.push((server.name.clone(), e));
                            }
                            continue;
                        }
                    }
                }
                let Some((running, port)) = current.as_ref() else {
                    continue;
                };
                let (running_pid, port) = (running.pid, *port);
                let load = loadavg();
                let mut cmd = Command::new("taskset");
                cmd.arg("-c")
                    .arg(session.client_cpu.to_string())
                    .arg(&me)
                    .arg("client")
                    .args(["--kind", server.kind])
                    .args(["--proto", session.proto])
                    .args(["--addr", &format!("127.0.0.1:{port}")])
                    .args(["--path", server.path])
                    .args(["--server-pid", &running_pid.to_string()])
                    .args(["--src-base", &src_base.to_string()])
                    .args(["--label", &server.name]);
                for (name, spec) in &session.phases {
                    cmd.arg(format!("{name}={spec}"));
                }
                eprintln!(
                    "[{:>5.1}s] rep {} {} {} ({} phases)",
                    started.elapsed().as_secs_f64(),
                    rep + 1,
                    server.name,
                    session.proto,
                    session.phases.len()
                );
                let output = cmd.stderr(Stdio::inherit()).output();
                let output = match output {
                    Ok(o) => o,
                    Err(e) => {
                        eprintln!("client failed: {e}");
                        continue;
                    }
                };
                for line in String::from_utf8_lossy(&output.stdout).lines() {
                    let Ok(data) = serde_json::from_str::<Value>(line) else {
                        continue;
                    };
                    let row = Row {
                        server: server.name.clone(),
                        proto: session.proto.to_owned(),
                        rep: rep + 1,
                        loadavg: load.clone(),
                        data,
                    };
                    writeln!(jsonl, "{}", serde_json::to_string(&row).unwrap_or_default())?;
                    rows.push(row);
                }
            }
            if let Some((r, _)) = current.take() {
                stop(r);
            }
        }
    }
    let load_after = loadavg();
    let summary = summarize(&rows);
    let uname = Command::new("uname")
        .arg("-sr")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let meta = json!({
        "date": date,
        "reps": reps,
        "quick": quick,
        "seconds": started.elapsed().as_secs_f64(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "machine": format!("{} CPUs, {cpu}, {uname}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)),
        "pinning": "server taskset -c 0 (1 thread/worker), load generator taskset -c 1 (same-core echo: both on 0)",
    });
    let summary_json: Vec<Value> = summary
        .iter()
        .map(|((phase, proto, server), m)| {
            let metrics: serde_json::Map<String, Value> = m
                .iter()
                .map(|(k, (med, lo, hi))| (k.clone(), json!({"median": med, "min": lo, "max": hi})))
                .collect();
            json!({"phase": phase, "proto": proto, "server": server, "metrics": metrics})
        })
        .collect();
    let results = json!({
        "meta": meta,
        "unavailable": unavailable.iter().map(|(n, w)| json!({"server": n, "why": w})).collect::<Vec<_>>(),
        "summary": summary_json,
        "rows": rows,
    });
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results).unwrap_or_default(),
    )?;
    let md = markdown(&summary, &unavailable, &results["meta"]);
    std::fs::write(out.join("results.md"), &md)?;
    println!("{md}");
    eprintln!(
        "wrote {} and {} in {:.0} s",
        out.join("results.json").display(),
        out.join("results.md").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
