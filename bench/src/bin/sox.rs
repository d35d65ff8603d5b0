//! socketioxide peer on one thread: `echo` answers with an ack, `send` emits back to the
//! sender, `broadcast` emits to every other socket. WebSocket transport only, engine.io
//! pings every 60 s (as the socket.io peer).
//!
//! `sox --listen 127.0.0.1:PORT`

use std::time::Duration;

use axum::serve::ListenerExt;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::TransportType;
use socketioxide::extract::{AckSender, Data, SocketRef};

fn main() -> std::io::Result<()> {
    let mut listen = "127.0.0.1:5200".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--listen" {
            listen = args.next().unwrap_or(listen);
        }
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen))
}

async fn serve(listen: String) -> std::io::Result<()> {
    let (layer, io) = SocketIo::builder()
        .ping_interval(Duration::from_secs(60))
        .ping_timeout(Duration::from_secs(60))
        .transports([TransportType::Websocket])
        .build_layer();
    io.ns("/", async |s: SocketRef| {
        s.on("echo", async |Data::<Value>(x), ack: AckSender| {
            let _ = ack.send(&x);
        });
        s.on("send", async |s: SocketRef, Data::<Value>(x)| {
            let _ = s.emit("send", &x);
        });
        s.on("broadcast", async |s: SocketRef, Data::<Value>(x)| {
            let _ = s.broadcast().emit("send", &x).await;
        });
    });
    let app = axum::Router::new().layer(layer);
    let addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    println!("listening on http://{}", listener.local_addr()?);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await
}
