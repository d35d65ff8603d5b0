//! [`HubService`]: the HTTP surface of one hub (or raw connection) path as a tower `Service`.
//!
//! It routes on the path *suffix* (`…/negotiate` or the path itself), so it can be mounted
//! under any prefix, for example with axum's `Router::nest_service("/hubs/chat", svc)`, or
//! served by bare hyper. It owns negotiate, the token → connection lookup, the transport and
//! method checks with ASP.NET's status codes, and the authentication hook. CORS, compression
//! and request logging belong to tower-http layers around it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited, combinators::UnsyncBoxBody};

use crate::options::TransportOptions;
use crate::protocol::negotiate::{self, NegotiateResponse, TransportType};
use crate::transport::manager::{ConnEntry, ConnectionManager};
use crate::transport::{
    ConnectionHandler, Frame, Principal, RequestInfo, long_polling, sse, websocket,
};

/// The response body type of [`HubService`].
pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// Decides who a request is from. It gets the bearer token (from `Authorization: Bearer` or
/// the `access_token` query parameter) and the request; `None` answers 401 with an empty body.
pub type Authenticate =
    Arc<dyn Fn(Option<&str>, &RequestInfo) -> Option<Principal> + Send + Sync + 'static>;

/// A tower `Service` serving one SignalR path: negotiate, WebSockets, Server-Sent Events and
/// long polling.
///
/// Build one from a hub with `Hub::into_service`, or from any [`ConnectionHandler`] with
/// [`HubService::new`].
#[derive(Clone)]
pub struct HubService {
    manager: Arc<ConnectionManager>,
    authenticate: Option<Authenticate>,
}

impl std::fmt::Debug for HubService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubService")
            .field("manager", &self.manager)
            .finish_non_exhaustive()
    }
}

fn full(
    status: StatusCode,
    content_type: Option<&'static str>,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    let mut res = Response::new(Full::new(body.into()).boxed_unsync());
    *res.status_mut() = status;
    if let Some(ct) = content_type {
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    res
}

fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    full(status, Some("text/plain"), body)
}

/// A refusal: a status code and a short text that never reveals internals.
struct Reject(StatusCode, &'static str);

impl Reject {
    fn response(self) -> Response<ResponseBody> {
        text(self.0, self.1)
    }
}

fn empty(status: StatusCode) -> Response<ResponseBody> {
    full(status, None, Bytes::new())
}

fn no_cache(res: &mut Response<ResponseBody>) {
    let h = res.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(
        header::EXPIRES,
        HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
    );
}

fn transport_not_supported(t: TransportType) -> Response<ResponseBody> {
    let body = format!(
        "{} transport not supported by this end point type",
        t.name()
    );
    full(StatusCode::NOT_FOUND, Some("text/plain"), body)
}

impl HubService {
    /// A service running `handler` for every connection on this path.
    pub fn new(handler: impl ConnectionHandler, options: TransportOptions) -> Self {
        Self::from_arc(Arc::new(handler), options)
    }

    pub(crate) fn from_arc(handler: Arc<dyn ConnectionHandler>, options: TransportOptions) -> Self {
        Self {
            manager: Arc::new(ConnectionManager::new(handler, options)),
            authenticate: None,
        }
    }

    /// Requires every request (negotiate and transport requests) to be authenticated.
    pub fn with_authentication(mut self, authenticate: Authenticate) -> Self {
        self.authenticate = Some(authenticate);
        self
    }

    /// Connections this path holds now (including negotiated-but-unused and just-ended ones,
    /// which the reaper removes within the disconnect timeout).
    pub fn connection_count(&self) -> usize {
        self.manager.len()
    }

    fn options(&self) -> &TransportOptions {
        &self.manager.options
    }

    fn enabled(&self, t: TransportType) -> bool {
        self.options().transports.contains(&t)
    }

    async fn handle<B>(self, mut req: Request<B>) -> Response<ResponseBody>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let info = RequestInfo::detached(req.uri(), req.headers());
        let principal = match &self.authenticate {
            None => None,
            Some(auth) => {
                let token = bearer_token(&info);
                match auth(token.as_deref(), &info) {
                    Some(p) => Some(p),
                    None => return empty(StatusCode::UNAUTHORIZED),
                }
            }
        };
        let path = req.uri().path().trim_end_matches('/');
        let is_negotiate = path
            .rsplit('/')
            .next()
            .is_some_and(|last| last.eq_ignore_ascii_case("negotiate"));
        if is_negotiate {
            return self.negotiate(req.method(), &info, principal);
        }
        let id = info.query("id");
        let method = req.method().clone();
        if method == Method::GET && websocket::is_upgrade(req.headers()) {
            let on_upgrade = hyper::upgrade::on(&mut req);
            return self.websocket(id, info, principal, on_upgrade);
        }
        let Some(id) = id else {
            return match method {
                Method::GET | Method::POST | Method::DELETE => {
                    text(StatusCode::BAD_REQUEST, "Connection ID required")
                }
                _ => empty(StatusCode::METHOD_NOT_ALLOWED),
            };
        };
        match method {
            Method::GET => {
                let sse = info
                    .header("accept")
                    .is_some_and(|a| a.contains("text/event-stream"));
                if sse {
                    self.server_sent_events(&id, info)
                } else {
                    self.long_poll(&id, info).await
                }
            }
            Method::POST => self.send(&id, req).await,
            Method::DELETE => self.delete(&id),
            _ => empty(StatusCode::METHOD_NOT_ALLOWED),
        }
    }

    fn negotiate(
        &self,
        method: &Method,
        info: &RequestInfo,
        principal: Option<Principal>,
    ) -> Response<ResponseBody> {
        if method != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        }
        let query = match negotiate::parse_negotiate_query(info.uri.query()) {
            Ok(q) => q,
            Err(_) => return text(StatusCode::BAD_REQUEST, "Invalid negotiation version"),
        };
        if query.negotiate_version < self.options().minimum_protocol_version {
            let body = negotiate::error_json(&format!(
                "The client requested version '{}', but the server does not support this version.",
                query.negotiate_version
            ));
            return full(StatusCode::OK, Some("application/json"), body);
        }
        if !self.manager.handler.accepting() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "Server is shutting down");
        }
        let stateful = query.use_stateful_reconnect && self.options().allow_stateful_reconnects;
        let v0 = query.negotiate_version == 0;
        let Some(entry) = self.manager.create(v0, stateful, principal) else {
            return text(StatusCode::TOO_MANY_REQUESTS, "Too many connections");
        };
        let response = NegotiateResponse {
            negotiate_version: query.negotiate_version,
            connection_id: entry.id.clone(),
            connection_token: (!v0).then(|| entry.token.clone()),
            available_transports: self.options().transports.clone(),
            use_stateful_reconnect: stateful,
        };
        full(StatusCode::OK, Some("application/json"), response.to_json())
    }

    /// Looks a token up; the public id never works as a token (it is a different string).
    fn lookup(&self, token: &str) -> Result<Arc<ConnEntry>, Reject> {
        self.manager
            .get(token)
            .ok_or(Reject(StatusCode::NOT_FOUND, "No Connection with that ID"))
    }

    /// Binds the connection to `t`, or refuses a switch of transport.
    fn bind(entry: &ConnEntry, t: TransportType) -> Result<(), Reject> {
        let bound = *entry.transport.get_or_init(|| t);
        if bound == t {
            Ok(())
        } else {
            Err(Reject(
                StatusCode::BAD_REQUEST,
                "Cannot change transports mid-connection",
            ))
        }
    }

    fn websocket(
        &self,
        id: Option<String>,
        info: RequestInfo,
        principal: Option<Principal>,
        on_upgrade: hyper::upgrade::OnUpgrade,
    ) -> Response<ResponseBody> {
        if !self.enabled(TransportType::WebSockets) {
            return transport_not_supported(TransportType::WebSockets);
        }
        if let (Some(allowed), Some(origin)) =
            (&self.options().allowed_origins, info.header("origin"))
            && !allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
        {
            tracing::debug!(origin, "websocket upgrade from a disallowed origin");
            return text(StatusCode::FORBIDDEN, "Origin not allowed");
        }
        let accept = match websocket::accept_key(&info.headers) {
            Ok(k) => k,
            Err(why) => return text(StatusCode::BAD_REQUEST, why),
        };
        let entry = match id {
            // skipNegotiation: the connection is created on the fly.
            None if !self.manager.handler.accepting() => {
                return text(StatusCode::SERVICE_UNAVAILABLE, "Server is shutting down");
            }
            None => match self.manager.create(true, false, principal) {
                Some(e) => e,
                None => return text(StatusCode::TOO_MANY_REQUESTS, "Too many connections"),
            },
            Some(token) => match self.lookup(&token) {
                Ok(e) => e,
                Err(reject) => return reject.response(),
            },
        };
        if entry.ended.is_cancelled() {
            return text(StatusCode::NOT_FOUND, "No Connection with that ID");
        }
        if let Err(reject) = Self::bind(&entry, TransportType::WebSockets) {
            return reject.response();
        }
        let reconnect = entry.is_started();
        if reconnect {
            if !entry.stateful {
                return text(StatusCode::CONFLICT, "Connection already has a transport");
            }
            // Stateful reconnect: this socket replaces the old one (which may not have
            // noticed its death yet).
            let mut slot = crate::transport::manager::lock(&entry.socket_cancel);
            slot.cancel();
            *slot = tokio_util::sync::CancellationToken::new();
        } else if entry.active.swap(true, Ordering::AcqRel) {
            return text(StatusCode::CONFLICT, "Connection already has a transport");
        }
        entry.active.store(true, Ordering::Release);
        let max_message = self.websocket_message_limit();
        let send_timeout = self.options().transport_send_timeout;
        let manager = self.manager.clone();
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    if reconnect {
                        entry.notify_reconnected();
                    } else {
                        manager.start(&entry, info);
                    }
                    websocket::serve(upgraded, entry, max_message, send_timeout).await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "websocket upgrade failed");
                    entry.set_inactive();
                }
            }
        });
        let mut res = empty(StatusCode::SWITCHING_PROTOCOLS);
        let h = res.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        res
    }

    /// One WebSocket message may carry several hub messages, so the frame limit is looser
    /// than the per-message limit the hub enforces; it only bounds what one frame can make us
    /// buffer.
    fn websocket_message_limit(&self) -> usize {
        self.options().maximum_post_body_size
    }

    fn server_sent_events(&self, token: &str, info: RequestInfo) -> Response<ResponseBody> {
        if !self.enabled(TransportType::ServerSentEvents) {
            return transport_not_supported(TransportType::ServerSentEvents);
        }
        let entry = match self.lookup(token) {
            Ok(e) => e,
            Err(reject) => return reject.response(),
        };
        if entry.ended.is_cancelled() {
            return text(StatusCode::NOT_FOUND, "No Connection with that ID");
        }
        if let Err(reject) = Self::bind(&entry, TransportType::ServerSentEvents) {
            return reject.response();
        }
        if entry.is_started() || entry.active.swap(true, Ordering::AcqRel) {
            return text(StatusCode::CONFLICT, "Connection already has a transport");
        }
        self.manager.start(&entry, info);
        let mut res = Response::new(sse::body(entry).boxed_unsync());
        no_cache(&mut res);
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache,no-store"),
        );
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        h.insert("long-running", HeaderValue::from_static("true"));
        res
    }

    async fn long_poll(&self, token: &str, info: RequestInfo) -> Response<ResponseBody> {
        if !self.enabled(TransportType::LongPolling) {
            return transport_not_supported(TransportType::LongPolling);
        }
        let entry = match self.lookup(token) {
            Ok(e) => e,
            Err(reject) => return reject.response(),
        };
        if let Err(reject) = Self::bind(&entry, TransportType::LongPolling) {
            return reject.response();
        }
        let mut res = if entry.ended.is_cancelled() && entry.outbound.queued_bytes() == 0 {
            empty(StatusCode::NO_CONTENT)
        } else if !entry.is_started() {
            // The first poll starts the application and returns at once: the client waits
            // for it before it sends the handshake.
            self.manager.start(&entry, info);
            entry.set_inactive();
            full(
                StatusCode::OK,
                Some("application/octet-stream"),
                Bytes::new(),
            )
        } else {
            let hold = self.options().long_polling_poll_timeout;
            match long_polling::poll(entry, hold, 1024 * 1024).await {
                long_polling::PollResult::Data(d) if d.is_empty() => {
                    full(StatusCode::OK, Some("text/plain"), d)
                }
                long_polling::PollResult::Data(d) => {
                    full(StatusCode::OK, Some("application/octet-stream"), d)
                }
                long_polling::PollResult::NoContent => empty(StatusCode::NO_CONTENT),
            }
        };
        no_cache(&mut res);
        res
    }

    async fn send<B>(&self, token: &str, req: Request<B>) -> Response<ResponseBody>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let entry = match self.lookup(token) {
            Ok(e) => e,
            Err(reject) => return reject.response(),
        };
        if entry.ended.is_cancelled() {
            return text(StatusCode::NOT_FOUND, "No Connection with that ID");
        }
        match entry.transport.get() {
            Some(TransportType::WebSockets) => {
                return text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "POST requests are not allowed for WebSocket connections.",
                );
            }
            None => return text(StatusCode::BAD_REQUEST, "No transport is connected yet"),
            Some(_) => {}
        }
        let limit = self.options().maximum_post_body_size;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return text(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large");
        }
        let binary = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/octet-stream"));
        let body = match Limited::new(req.into_body(), limit).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    return text(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large");
                }
                return text(StatusCode::BAD_REQUEST, "Could not read the request body");
            }
        };
        if entry.ended.is_cancelled() {
            return text(StatusCode::NOT_FOUND, "No Connection with that ID");
        }
        let Some(tx) = entry.inbound() else {
            return text(StatusCode::NOT_FOUND, "No Connection with that ID");
        };
        if body.is_empty() {
            return empty(StatusCode::OK);
        }
        let frame = if binary {
            Frame::Binary(body)
        } else {
            Frame::Text(body)
        };
        if tx.send(frame).await.is_err() {
            return text(StatusCode::NOT_FOUND, "No Connection with that ID");
        }
        empty(StatusCode::OK)
    }

    fn delete(&self, token: &str) -> Response<ResponseBody> {
        let entry = match self.lookup(token) {
            Ok(e) => e,
            Err(reject) => return reject.response(),
        };
        if entry.transport.get() != Some(&TransportType::LongPolling) {
            return text(
                StatusCode::BAD_REQUEST,
                "Cannot terminate this connection using the DELETE endpoint.",
            );
        }
        entry.close_inbound();
        text(StatusCode::ACCEPTED, "")
    }
}

/// The bearer token of a request: `Authorization: Bearer …`, else the `access_token` query
/// parameter (browsers cannot set headers on WebSockets and EventSource).
pub(crate) fn bearer_token(info: &RequestInfo) -> Option<String> {
    if let Some(t) = info.header("authorization").and_then(|h| {
        h.strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
    }) {
        return Some(t.trim().to_owned());
    }
    info.query("access_token")
}

impl<B> tower_service::Service<Request<B>> for HubService
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}
