//! The README's hub, as a program: `cargo run --example chat`, then connect a SignalR client
//! to `http://127.0.0.1:5000/hubs/chat`.

use tidings::{Args, Caller, Clients, Hub, HubError};

async fn send_message(
    clients: Clients,
    Args((user, text)): Args<(String, String)>,
) -> Result<(), HubError> {
    clients.all().send("ReceiveMessage", (user, text)).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let hub = Hub::builder()
        .method("SendMessage", send_message) // matched case-insensitively, as in .NET
        .method("Add", |Args((a, b)): Args<(i64, i64)>| async move { a + b })
        .on_connected(|caller: Caller| async move { tracing::info!(id = caller.connection_id()) })
        .build();
    let chat = hub.context(); // IHubContext: send from timers, HTTP handlers, other tasks
    tokio::spawn(async move {
        let _ = chat.clients().all().send("Hello", ()).await;
    });
    let app = axum::Router::new().nest_service("/hubs/chat", hub.into_service());
    axum::serve(tokio::net::TcpListener::bind("127.0.0.1:5000").await?, app).await
}
