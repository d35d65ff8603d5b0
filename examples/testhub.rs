//! The test server every conformance run talks to (`../shared/testhub-contract.md`).
//!
//! `cargo run --release --example testhub -- --listen 127.0.0.1:0` prints
//! `listening on http://ADDR` once it accepts connections, and runs until SIGTERM/SIGINT.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use futures_util::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use tidings::auth::JwtAuth;
use tidings::transport::{BoxFuture, ConnectionHandler, ConnectionIo, TransportType};
use tidings::value::{Binary, NativeValue, Timestamp};
use tidings::{
    Args, Caller, CancellationToken, ClientStream, Clients, Groups, Hub, HubContext, HubError,
    TransportOptions,
};

#[derive(Parser, Debug)]
struct Cli {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:5000")]
    listen: String,
    /// Joins a Redis backplane (`redis://HOST:PORT`): fan-out then spans every process
    /// sharing that Redis.
    #[arg(long)]
    redis: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct CustomObject {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Value")]
    value: i64,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
struct ComplexObject {
    string: String,
    int_array: Vec<i64>,
    byte_array: Binary,
    guid: String,
    date_time: Timestamp,
}

fn invalid_operation(message: String) -> HubError {
    HubError::unexpected("InvalidOperationException", message)
}

/// The hub builder with the backplane of `--redis`, if any.
fn builder(name: &str, redis: Option<&str>) -> tidings::HubBuilder {
    let b = Hub::builder().name(name);
    match redis {
        Some(url) => b.backplane(tidings::backplane::RedisBackplane::new(url)),
        None => b,
    }
}

fn test_hub(redis: Option<&str>) -> Hub {
    builder("TestHub", redis)
        .method("Echo", |Args(message): Args<String>| async move { message })
        .method("GetCallerConnectionId", |caller: Caller| async move {
            caller.connection_id().to_owned()
        })
        .method("GetNumRedirects", |caller: Caller| async move {
            caller
                .info()
                .request
                .query("numRedirects")
                .and_then(|n| n.parse::<i64>().ok())
                .unwrap_or(0)
        })
        .method("ThrowException", |Args(message): Args<String>| async move {
            Err::<(), _>(invalid_operation(message))
        })
        .method("ThrowHubException", |Args(message): Args<String>| async move {
            Err::<(), _>(HubError::new(message))
        })
        .method(
            "InvokeWithString",
            |caller: Caller, Args(message): Args<String>| async move {
                caller.send("Message", (message,)).await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "SendCustomObject",
            |caller: Caller, Args(obj): Args<CustomObject>| async move {
                caller.send("CustomObject", (obj,)).await?;
                Ok::<(), HubError>(())
            },
        )
        .stream("Stream", || async { stream::iter(["a", "b", "c"]) })
        .stream(
            "InfiniteStream",
            |caller: Caller, cancel: CancellationToken| async move {
                tokio::spawn(async move {
                    cancel.cancelled().await;
                    let _ = caller.send("StreamCanceled", ()).await;
                });
                stream::pending::<i32>()
            },
        )
        .method(
            "StreamingConcat",
            |mut items: ClientStream<String>| async move {
                let mut out = String::new();
                while let Some(item) = items.next().await {
                    out.push_str(&item?);
                }
                Ok::<_, HubError>(out)
            },
        )
        .stream("EmptyStream", || async { stream::empty::<i32>() })
        .stream(
            "StreamThrowException",
            |Args(message): Args<String>| async move {
                stream::once(async move { Err::<i32, _>(invalid_operation(message)) })
            },
        )
        .stream(
            "Counter",
            |Args((count, delay_ms)): Args<(i64, u64)>| async move {
                stream::unfold(0, move |i| async move {
                    if i >= count {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    Some((i, i + 1))
                })
            },
        )
        .method("GetActiveTransportName", |caller: Caller| async move {
            caller.info().transport.name()
        })
        .method(
            "EchoComplexObject",
            |Args(obj): Args<NativeValue>| async move { obj },
        )
        .method("SendComplexObject", || async {
            ComplexObject {
                string: "hello world".into(),
                int_array: vec![1, 2, 3],
                byte_array: Binary(vec![1, 2, 3]),
                guid: "00010203-0405-0607-0706-050403020100".into(),
                date_time: Timestamp::from_unix(946_684_800),
            }
        })
        .method("GetContentTypeHeader", |caller: Caller| async move {
            caller.info().request.header("content-type").map(str::to_owned)
        })
        .method(
            "GetHeader",
            |caller: Caller, Args(name): Args<String>| async move {
                caller.info().request.header(&name).map(str::to_owned)
            },
        )
        .method(
            "GetCookie",
            |caller: Caller, Args(name): Args<String>| async move {
                caller.info().request.cookie(&name)
            },
        )
        .method("GenerateString", |Args(length): Args<usize>| async move {
            "x".repeat(length.min(16 * 1024 * 1024))
        })
        .method(
            "AddToGroup",
            |caller: Caller, groups: Groups, Args(group): Args<String>| async move {
                groups.add(caller.connection_id(), &group).await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "RemoveFromGroup",
            |caller: Caller, groups: Groups, Args(group): Args<String>| async move {
                groups.remove(caller.connection_id(), &group).await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "SendToGroup",
            |clients: Clients, Args((group, message)): Args<(String, String)>| async move {
                clients.group(&group).send("GroupMessage", (&group, message)).await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "SendToOthersInGroup",
            |clients: Clients, Args((group, message)): Args<(String, String)>| async move {
                clients
                    .others_in_group(&group)
                    .send("GroupMessage", (&group, message))
                    .await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "SendToAll",
            |clients: Clients, Args(message): Args<String>| async move {
                clients.all().send("Broadcast", (message,)).await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "SendToOthers",
            |clients: Clients, Args(message): Args<String>| async move {
                clients.others().send("Broadcast", (message,)).await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "SendToCaller",
            |clients: Clients, Args(message): Args<String>| async move {
                clients.caller().send("Broadcast", (message,)).await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "SendToConnection",
            |clients: Clients, Args((id, message)): Args<(String, String)>| async move {
                clients.client(id).send("Direct", (message,)).await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "CloseConnection",
            |caller: Caller, Args((error, allow_reconnect)): Args<(Option<String>, bool)>| async move {
                caller.close(error, allow_reconnect);
            },
        )
        .build()
}

/// The raw `/echo` connection: every payload back, verbatim, in the frame type it came in.
struct Echo;

impl ConnectionHandler for Echo {
    fn on_connected(&self, mut io: ConnectionIo) -> BoxFuture<()> {
        Box::pin(async move {
            while let Some(frame) = io.inbound.recv().await {
                if io.outbound.push(frame).is_err() {
                    break;
                }
            }
        })
    }
}

/// The negotiate cookies of contract §1 on every negotiate response.
async fn negotiate_cookies(req: Request, next: Next) -> Response {
    let negotiate = req.uri().path().contains("/negotiate");
    let mut res = next.run(req).await;
    if negotiate {
        let h = res.headers_mut();
        for c in [
            "testCookie=testValue; Path=/",
            "testCookie2=testValue2; Path=/",
            "expiredCookie=doesntmatter; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
        ] {
            h.append(header::SET_COOKIE, HeaderValue::from_static(c));
        }
    }
    res
}

const HUB_PATHS: [&str; 7] = [
    "/scaleout",
    "/testhub-nowebsockets",
    "/testhub-nodetails",
    "/testhub",
    "/authorizedhub",
    "/uncreatable",
    "/echo",
];

/// Hub paths match case-insensitively, as in ASP.NET; ids after them keep their case.
async fn lowercase_hub_paths(mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let lower = path.to_ascii_lowercase();
    if let Some(prefix) = HUB_PATHS.iter().find(|p| {
        lower.starts_with(*p) && matches!(lower.as_bytes().get(p.len()), None | Some(b'/'))
    }) && !path.starts_with(prefix)
    {
        let rest = &path[prefix.len()..];
        let pq = match req.uri().query() {
            Some(q) => format!("{prefix}{rest}?{q}"),
            None => format!("{prefix}{rest}"),
        };
        if let Ok(uri) = pq.parse() {
            *req.uri_mut() = uri;
        }
    }
    next.run(req).await
}

static REDIRECTS: AtomicU64 = AtomicU64::new(0);

async fn redirect(Query(q): Query<std::collections::HashMap<String, String>>) -> Response {
    let n = REDIRECTS.fetch_add(1, Ordering::Relaxed) + 1;
    let base = q.get("baseUrl").cloned().unwrap_or_default();
    let url = format!("{base}/testhub?numRedirects={n}");
    let body = tidings::protocol::negotiate::redirect_json(&url, None);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn bad_negotiate() -> Response {
    (StatusCode::BAD_REQUEST, "Some response from server").into_response()
}

async fn client_result(hub: HubContext, id: String) -> Response {
    let result = hub
        .clients()
        .client(id)
        .invoke::<serde_json::Value>("Result", ())
        .await;
    let body = match result {
        Ok(serde_json::Value::Number(n)) => n.to_string(),
        Ok(other) => other.to_string(),
        Err(tidings::Error::ClientError(e)) => e,
        Err(e) => e.to_string(),
    };
    ([(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// `/redirect…` and `/bad-negotiate…`: any path that starts with them (contract §8).
async fn prefixed(req: Request) -> Response {
    let path = req.uri().path();
    if path.starts_with("/redirect") {
        let query = Query::try_from_uri(req.uri())
            .map(|q| q.0)
            .unwrap_or_default();
        redirect(Query(query)).await
    } else if path.starts_with("/bad-negotiate") {
        bad_negotiate().await
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

fn authorized_hub() -> Hub {
    Hub::builder()
        .name("AuthorizedHub")
        .method("Echo", |Args(message): Args<String>| async move { message })
        .method("GetUserNameIdentifier", |caller: Caller| async move {
            caller.user_id().unwrap_or_default().to_owned()
        })
        .method(
            "GetUserClaim",
            |caller: Caller, Args(kind): Args<String>| async move {
                caller
                    .info()
                    .principal
                    .as_ref()
                    .and_then(|p| p.claim(&kind))
                    .unwrap_or_default()
                    .to_owned()
            },
        )
        .build()
}

/// `/scaleout` [ext]: every fan-out target and presence query, for multi-node tests. The
/// user id comes from the `user` query parameter.
fn scaleout_hub(redis: Option<&str>) -> Hub {
    type Ids = Vec<String>;
    builder("ScaleoutHub", redis)
        .method("Whoami", |caller: Caller| async move {
            (
                caller.connection_id().to_owned(),
                caller.user_id().map(str::to_owned),
            )
        })
        .method(
            "AllExcept",
            |c: Clients, Args((ids, m)): Args<(Ids, String)>| async move {
                c.all_except(ids).send("Msg", ("allExcept", m)).await?;
                Ok::<(), HubError>(())
            },
        )
        .method("ToOthers", |c: Clients, Args(m): Args<String>| async move {
            c.others().send("Msg", ("others", m)).await?;
            Ok::<(), HubError>(())
        })
        .method(
            "ToOthersInGroup",
            |c: Clients, Args((g, m)): Args<(String, String)>| async move {
                c.others_in_group(g)
                    .send("Msg", ("othersInGroup", m))
                    .await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "ToClients",
            |c: Clients, Args((ids, m)): Args<(Ids, String)>| async move {
                c.clients(ids).send("Msg", ("clients", m)).await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "ToClient",
            |c: Clients, Args((id, m)): Args<(String, String)>| async move {
                c.client(id).send("Msg", ("client", m)).await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "ToGroups",
            |c: Clients, Args((gs, m)): Args<(Ids, String)>| async move {
                c.groups(gs).send("Msg", ("groups", m)).await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "ToGroupExcept",
            |c: Clients, Args((g, ids, m)): Args<(String, Ids, String)>| async move {
                c.group_except(g, ids)
                    .send("Msg", ("groupExcept", m))
                    .await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "ToUser",
            |c: Clients, Args((u, m)): Args<(String, String)>| async move {
                c.user(u).send("Msg", ("user", m)).await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "ToUsers",
            |c: Clients, Args((us, m)): Args<(Ids, String)>| async move {
                c.users(us).send("Msg", ("users", m)).await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "AddConnectionToGroup",
            |groups: Groups, Args((id, g)): Args<(String, String)>| async move {
                groups.add(&id, &g).await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "RemoveConnectionFromGroup",
            |groups: Groups, Args((id, g)): Args<(String, String)>| async move {
                groups.remove(&id, &g).await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "IsConnected",
            |c: Clients, Args(id): Args<String>| async move {
                Ok::<_, HubError>(c.presence().is_connected(&id).await?)
            },
        )
        .method(
            "IsUserConnected",
            |c: Clients, Args(u): Args<String>| async move {
                Ok::<_, HubError>(c.presence().is_user_connected(&u).await?)
            },
        )
        .method(
            "GroupMembers",
            |c: Clients, Args(g): Args<String>| async move {
                Ok::<_, HubError>(c.presence().group_members(&g).await?)
            },
        )
        .method("ConnectionCount", |c: Clients| async move {
            Ok::<_, HubError>(c.presence().connection_count().await?)
        })
        .method(
            "InvokeClient",
            |c: Clients, Args(id): Args<String>| async move {
                match c.client(id).invoke::<serde_json::Value>("Result", ()).await {
                    Ok(v) => v.to_string(),
                    Err(tidings::Error::ClientError(e)) => e,
                    Err(e) => e.to_string(),
                }
            },
        )
        // Bench: `count` messages to every connection as fast as the node can queue them;
        // each carries its index and the send time (ms since the Unix epoch).
        .method(
            "Blast",
            |c: Clients, Args((count, size)): Args<(u64, usize)>| async move {
                let pad = "x".repeat(size.min(64 * 1024));
                let all = c.all();
                for i in 0..count {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64() * 1000.0)
                        .unwrap_or_default();
                    all.send("Blast", (i, now, &pad)).await?;
                    if i % 256 == 255 {
                        tokio::task::yield_now().await;
                    }
                }
                Ok::<(), HubError>(())
            },
        )
        .build()
}

/// The router, and the hub contexts whose backplane counters `/backplane` shows.
fn app_with(redis: Option<&str>) -> (Router, Vec<HubContext>) {
    // A fresh secret per process: tokens are only for this test server.
    let secret: [u8; 32] = rand::random();
    let jwt = JwtAuth::hs256(&secret).expect("HS256 key");
    let jwt_issuer = jwt.clone();
    let hub = test_hub(redis);
    let scaleout = scaleout_hub(redis);
    let contexts = vec![hub.context(), scaleout.context()];
    let stats_contexts = contexts.clone();
    let detailed = hub.with_options(|o| o.enable_detailed_errors = true);
    let nodetails = hub.with_options(|o| o.enable_detailed_errors = false);
    let context = hub.context();
    let stateful = TransportOptions {
        allow_stateful_reconnects: true,
        ..Default::default()
    };
    let no_ws = TransportOptions {
        transports: vec![TransportType::ServerSentEvents, TransportType::LongPolling],
        ..Default::default()
    };
    let uncreatable = Hub::builder()
        .name("UncreatableHub")
        .on_connected(|| async {
            Err::<(), _>(HubError::unexpected(
                "InvalidOperationException",
                "UncreatableHub cannot be created",
            ))
        })
        .build();
    let router = Router::new()
        .nest_service("/testhub", detailed.service(stateful))
        .nest_service("/testhub-nowebsockets", detailed.service(no_ws))
        .nest_service("/testhub-nodetails", nodetails.into_service())
        .nest_service("/uncreatable", uncreatable.into_service())
        .nest_service(
            "/echo",
            tidings::HubService::new(Echo, TransportOptions::default()),
        )
        .route(
            "/clientresult/{id}",
            get(move |Path(id): Path<String>| client_result(context.clone(), id)),
        )
        .nest_service(
            "/authorizedhub",
            authorized_hub()
                .service(TransportOptions::default())
                .with_authentication(jwt.clone().authenticate()),
        )
        .route(
            "/generateJwtToken",
            get(move || async move {
                jwt_issuer
                    .issue("testuser", Duration::from_secs(300))
                    .unwrap_or_default()
            }),
        )
        .fallback(prefixed)
        .route(
            "/deployment",
            get(|| async {
                axum::Json(
                    serde_json::json!({"server": "tidings", "version": env!("CARGO_PKG_VERSION")}),
                )
            }),
        )
        .nest_service(
            "/scaleout",
            scaleout
                .with_options(|o| o.enable_detailed_errors = true)
                .service(TransportOptions::default())
                .with_authentication(std::sync::Arc::new(|_token, request| {
                    Some(tidings::transport::Principal {
                        user_id: request.query("user"),
                        claims: Vec::new(),
                    })
                })),
        )
        .route(
            "/backplane",
            get(move || {
                let stats: Vec<_> = stats_contexts.iter().map(|c| c.backplane_stats()).collect();
                async move { axum::Json(serde_json::json!({ "hubs": stats })) }
            }),
        )
        .layer(middleware::from_fn(negotiate_cookies));
    (router, contexts)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let listener = tokio::net::TcpListener::bind(&cli.listen).await?;
    let addr = listener.local_addr()?;
    // Lower-casing must happen before routing, so it wraps the whole router.
    let (app, _contexts) = app_with(cli.redis.as_deref());
    let app = tower_layer::Layer::layer(&middleware::from_fn(lowercase_hub_paths), app);
    println!("listening on http://{addr}");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    // tidings::server: hyper with a header-read timeout (slowloris), limits and a bounded drain.
    tidings::server::serve(
        listener,
        tidings::server::map_request_body(app, axum::body::Body::new),
        shutdown,
    )
    .await
}
