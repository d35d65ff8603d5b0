//! Path options enforced by `HubService`, driven in-process (no sockets).

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tidings::{Args, Hub, HubService, TransportOptions};
use tower_service::Service;

fn hub() -> Hub {
    Hub::builder()
        .method("Echo", |Args(s): Args<String>| async move { s })
        .build()
}

async fn call(svc: &mut HubService, req: Request<Full<Bytes>>) -> (StatusCode, String) {
    let res = svc.call(req).await.expect("infallible");
    let status = res.status();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn negotiate() -> Request<Full<Bytes>> {
    Request::post("/negotiate?negotiateVersion=1")
        .body(Full::default())
        .unwrap()
}

fn upgrade(origin: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::get("/")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    if let Some(o) = origin {
        b = b.header("origin", o);
    }
    b.body(Full::default()).unwrap()
}

#[tokio::test]
async fn websocket_upgrades_check_the_origin_list() {
    let mut svc = hub().service(TransportOptions {
        allowed_origins: Some(vec!["https://app.example".into()]),
        ..Default::default()
    });
    let (status, _) = call(&mut svc, upgrade(Some("https://evil.example"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(&mut svc, upgrade(Some("https://APP.example"))).await;
    assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
    // Non-browser clients send no Origin.
    let (status, _) = call(&mut svc, upgrade(None)).await;
    assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
}

#[tokio::test]
async fn pending_negotiations_are_bounded() {
    let mut svc = hub().service(TransportOptions {
        maximum_pending_negotiations: 3,
        ..Default::default()
    });
    for _ in 0..3 {
        assert_eq!(call(&mut svc, negotiate()).await.0, StatusCode::OK);
    }
    let (status, body) = call(&mut svc, negotiate()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body, "Too many connections");
    assert_eq!(svc.connection_count(), 3);
}

#[tokio::test(start_paused = true)]
async fn orphaned_negotiations_are_reaped_after_the_disconnect_timeout() {
    let mut svc = hub().into_service();
    for _ in 0..5 {
        assert_eq!(call(&mut svc, negotiate()).await.0, StatusCode::OK);
    }
    assert_eq!(svc.connection_count(), 5);
    tokio::time::sleep(std::time::Duration::from_secs(17)).await;
    assert_eq!(svc.connection_count(), 0);
}

#[tokio::test]
async fn negotiate_answers_503_while_the_hub_drains() {
    let hub = hub();
    let mut svc = hub.service(TransportOptions::default());
    assert_eq!(hub.drain(std::time::Duration::from_millis(10)).await, 0);
    let (status, _) = call(&mut svc, negotiate()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = call(&mut svc, upgrade(None)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn wrong_methods_and_missing_ids() {
    let mut svc = hub().into_service();
    let get_negotiate = Request::get("/negotiate").body(Full::default()).unwrap();
    assert_eq!(
        call(&mut svc, get_negotiate).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let put = Request::put("/?id=x").body(Full::default()).unwrap();
    assert_eq!(call(&mut svc, put).await.0, StatusCode::METHOD_NOT_ALLOWED);
    let post = Request::post("/").body(Full::default()).unwrap();
    assert_eq!(
        call(&mut svc, post).await,
        (StatusCode::BAD_REQUEST, "Connection ID required".into())
    );
    let bad_version = Request::post("/negotiate?negotiateVersion=abc")
        .body(Full::default())
        .unwrap();
    let (status, _) = call(&mut svc, bad_version).await;
    assert!(status.is_client_error(), "{status}");
}
