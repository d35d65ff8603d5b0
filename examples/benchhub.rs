//! The tidings server under benchmark (`BENCHMARKS.md`, `bench/`).
//!
//! `cargo run --release --example benchhub -- --listen 127.0.0.1:5000 --workers 1` serves the
//! hub at `/bench` and prints `listening on http://ADDR` once it accepts connections.
//!
//! Hub methods:
//! - `Echo(x) -> x`: an invocation answered by a Completion (echo round trips);
//! - `Send(x)`: fire-and-forget, answered by `send(x)` to the caller (pipelined echo);
//! - `Broadcast(x)`: `send(x)` to every other connection, so the publisher is not a
//!   subscriber (`Clients.Others`, as in ASP.NET's benchmark hub).

use axum::Router;
use axum::extract::Request;
use axum::serve::ListenerExt;
use clap::Parser;
use tidings::{Args, Caller, Clients, Hub, HubError};

#[derive(Parser, Debug)]
struct Cli {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:5000")]
    listen: String,
    /// Runtime worker threads; 1 runs everything on one thread (the pinned configuration).
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

fn bench_hub() -> Hub {
    Hub::builder()
        .name("BenchHub")
        .method("Echo", |Args(x): Args<String>| async move { x })
        .method("Send", |caller: Caller, Args(x): Args<String>| async move {
            caller.send("send", (x,)).await?;
            Ok::<(), HubError>(())
        })
        .method(
            "Broadcast",
            |clients: Clients, Args(x): Args<String>| async move {
                clients.others().send("send", (x,)).await?;
                Ok::<(), HubError>(())
            },
        )
        .build()
}

fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let runtime = if cli.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.workers)
            .enable_all()
            .build()?
    };
    runtime.block_on(serve(cli))
}

async fn serve(cli: Cli) -> std::io::Result<()> {
    let addr: std::net::SocketAddr = cli
        .listen
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // A backlog of 4096 (tokio's bind uses 1024): connection storms of the setup benchmark.
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    let local = listener.local_addr()?;
    let listener = listener.tap_io(|tcp| {
        // Batching is explicit (one write per outbound batch), never Nagle's.
        let _ = tcp.set_nodelay(true);
    });
    let app = Router::new().nest_service("/bench", bench_hub().into_service());
    println!("listening on http://{local}");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    axum::serve(
        listener,
        axum::ServiceExt::<Request>::into_make_service(app),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
