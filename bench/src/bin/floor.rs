//! The naive floor: a raw tokio-tungstenite server on one thread, written the obvious way
//! (split socket, one writer task and an unbounded queue per connection, one flush per
//! message). A text frame starting with `b` goes to every other connection; anything else
//! is echoed back.
//!
//! `floor --listen 127.0.0.1:PORT [--read-buffer BYTES]` (default read buffer 4 KiB;
//! tungstenite's own default is 128 KiB).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Peers = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>>;

fn main() -> std::io::Result<()> {
    let mut listen = "127.0.0.1:5100".to_owned();
    let mut read_buffer = 4096usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or(listen),
            "--read-buffer" => {
                read_buffer = args.next().and_then(|v| v.parse().ok()).unwrap_or(4096)
            }
            other => eprintln!("ignoring argument {other}"),
        }
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, read_buffer))
}

async fn serve(listen: String, read_buffer: usize) -> std::io::Result<()> {
    let addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    println!("listening on http://{}", listener.local_addr()?);
    let peers: Peers = Arc::default();
    let ids = AtomicU64::new(0);
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let peers = peers.clone();
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await
            else {
                return;
            };
            let (mut sink, mut stream) = ws.split();
            let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
            peers.lock().unwrap().insert(id, tx.clone());
            let writer = tokio::spawn(async move {
                while let Some(m) = rx.recv().await {
                    if sink.send(m).await.is_err() {
                        break;
                    }
                }
            });
            while let Some(Ok(msg)) = stream.next().await {
                match msg {
                    Message::Text(t) if t.as_bytes().first() == Some(&b'b') => {
                        let m = Message::Text(t);
                        for (pid, p) in peers.lock().unwrap().iter() {
                            if *pid != id {
                                let _ = p.send(m.clone());
                            }
                        }
                    }
                    Message::Text(_) | Message::Binary(_) => {
                        let _ = tx.send(msg);
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            peers.lock().unwrap().remove(&id);
            drop(tx);
            writer.abort();
        });
    }
}
