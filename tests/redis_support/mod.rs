//! A throwaway `redis-server` for one test: a free loopback port, its own directory, no
//! persistence, killed on drop. Missing `redis-server` skips the test, except with `CI=true`,
//! where it fails (scripts/redis-tests.sh installs it).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl RedisServer {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one inline command; returns the first reply line.
    pub fn command(&self, line: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(format!("{line}\r\n").as_bytes())?;
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn binary() -> Option<String> {
    let candidates = [
        std::env::var("REDIS_SERVER").ok(),
        Some("redis-server".into()),
        Some("/usr/bin/redis-server".into()),
    ];
    candidates.into_iter().flatten().find(|c| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Starts a server, or returns `None` (test skipped) when there is none outside CI.
pub fn start() -> Option<RedisServer> {
    let Some(bin) = binary() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "redis-server not found and CI=true: run scripts/redis-tests.sh, which installs it"
            );
        }
        eprintln!("SKIPPED: redis-server not found (install it, or run scripts/redis-tests.sh)");
        return None;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir =
        std::env::temp_dir().join(format!("tidings-redis-test-{port}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("redis dir");
    let child = Command::new(&bin)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server");
    let server = RedisServer { child, port, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if server.command("PING").is_ok_and(|r| r == "+PONG") {
            return Some(server);
        }
        assert!(
            Instant::now() < deadline,
            "redis-server did not answer within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Serves `hub` at `/hub` on a loopback port; returns the base `ws://` URL of the hub.
pub async fn serve(hub: tidings::Hub) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().nest_service("/hub", hub.into_service());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("ws://{addr}/hub")
}

/// A minimal SignalR JSON client over WebSockets (skip-negotiation), enough for tests.
pub struct Client {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream2>>,
    next: u64,
    /// Invocations received (target, arguments), in order.
    pub received: Vec<(String, serde_json::Value)>,
}

type TcpStream2 = tokio::net::TcpStream;

impl Client {
    pub async fn connect(url: &str) -> Self {
        use futures_util::{SinkExt, StreamExt};
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        ws.send(tokio_tungstenite::tungstenite::Message::text(
            "{\"protocol\":\"json\",\"version\":1}\u{1e}",
        ))
        .await
        .unwrap();
        let first = ws.next().await.expect("handshake").unwrap();
        assert!(
            first.to_text().unwrap().starts_with("{}"),
            "handshake: {first:?}"
        );
        Self {
            ws,
            next: 0,
            received: Vec::new(),
        }
    }

    async fn frames(&mut self) -> Vec<serde_json::Value> {
        use futures_util::StreamExt;
        let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
            .await
            .expect("a message within 10 s")
            .expect("connection open")
            .expect("frame");
        let text = msg.to_text().unwrap_or_default().to_owned();
        text.split('\u{1e}')
            .filter(|s| !s.is_empty())
            .map(|s| serde_json::from_str(s).unwrap())
            .collect()
    }

    fn keep(&mut self, m: &serde_json::Value) {
        if m["type"] == 1 {
            self.received.push((
                m["target"].as_str().unwrap().to_owned(),
                m["arguments"].clone(),
            ));
        }
    }

    /// Invokes a hub method and waits for its Completion; returns its result.
    pub async fn invoke(&mut self, target: &str, args: serde_json::Value) -> serde_json::Value {
        use futures_util::SinkExt;
        self.next += 1;
        let id = self.next.to_string();
        let msg =
            serde_json::json!({"type": 1, "invocationId": id, "target": target, "arguments": args});
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::text(format!(
                "{msg}\u{1e}"
            )))
            .await
            .unwrap();
        loop {
            for m in self.frames().await {
                if m["type"] == 3 && m["invocationId"] == id.as_str() {
                    assert!(m.get("error").is_none(), "{target} failed: {m}");
                    return m.get("result").cloned().unwrap_or(serde_json::Value::Null);
                }
                self.keep(&m);
            }
        }
    }

    /// Waits until `n` invocations of `target` were received; returns their arguments.
    pub async fn wait_for(&mut self, target: &str, n: usize) -> Vec<serde_json::Value> {
        loop {
            let got: Vec<_> = self
                .received
                .iter()
                .filter(|(t, _)| t == target)
                .map(|(_, a)| a.clone())
                .collect();
            if got.len() >= n {
                return got;
            }
            for m in self.frames().await {
                self.keep(&m);
            }
        }
    }
}
