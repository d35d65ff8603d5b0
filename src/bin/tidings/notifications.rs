//! `NotificationsHub` (`/hubs/notifications`): alerts to everyone, to one user, or to a group.
//!
//! Users, without real authentication: a client names itself with the `user` query parameter
//! of the hub URL (`/hubs/notifications?user=alice`). The path's authentication hook turns it
//! into the connection's user id, so `Clients::user` targets every connection (every tab) of
//! that user. Anyone can claim any name: this is identification for a demo, not security; put
//! a real hook (JWT, cookie) in its place for anything else.
//!
//! - `JoinGroup(group)` / `LeaveGroup(group)`: subscribe to a group's alerts;
//! - `Send({title, body, level, user?, group?})`: send one from a client;
//! - `POST /api/notifications` with the same JSON body sends one from any HTTP client
//!   (`curl`, a cron job…): `202 {"id", "target"}`, or `400 {"error"}`.
//!
//! Every alert reaches its targets as `ReceiveNotification(notification)`.
//! The hub pushes only server-to-client messages once joined, so it works on every transport,
//! including a client limited to Server-Sent Events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use tidings::transport::{Principal, RequestInfo};
use tidings::{Args, Caller, Groups, Hub, HubContext, HubError};

const MAX_TITLE: usize = 120;
const MAX_BODY: usize = 2_000;
const MAX_NAME: usize = 64;

/// What a sender gives.
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct NotificationRequest {
    title: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    level: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    group: Option<String>,
}

/// What a receiver gets.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    id: u64,
    title: String,
    body: String,
    level: &'static str,
    user: Option<String>,
    group: Option<String>,
    timestamp_ms: u64,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

fn level(level: Option<&str>) -> Result<&'static str, String> {
    match level.unwrap_or("info") {
        "info" => Ok("info"),
        "success" => Ok("success"),
        "warning" => Ok("warning"),
        "error" => Ok("error"),
        other => Err(format!(
            "level '{other}' is not one of info, success, warning, error"
        )),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The hub and its HTTP entry point.
#[derive(Clone, Debug)]
pub struct Notifications {
    hub: Hub,
    next_id: Arc<AtomicU64>,
}

impl Notifications {
    /// Builds the hub.
    pub fn new() -> Self {
        let next_id = Arc::new(AtomicU64::new(1));
        let hub = crate::hub_builder("NotificationsHub")
            .state(next_id.clone())
            .method(
                "JoinGroup",
                |caller: Caller, groups: Groups, Args(group): Args<String>| async move {
                    if !valid_name(&group) {
                        return Err(HubError::new("invalid group name"));
                    }
                    groups
                        .add(caller.connection_id(), &format!("group:{group}"))
                        .await?;
                    Ok(())
                },
            )
            .method(
                "LeaveGroup",
                |caller: Caller, groups: Groups, Args(group): Args<String>| async move {
                    groups
                        .remove(caller.connection_id(), &format!("group:{group}"))
                        .await?;
                    Ok::<(), HubError>(())
                },
            )
            .method(
                "Send",
                |ctx: HubContext,
                 tidings::State(ids): tidings::State<Arc<AtomicU64>>,
                 Args(req): Args<NotificationRequest>| async move {
                    deliver(&ctx, &ids, req).await.map_err(HubError::new)
                },
            )
            .build();
        Self { hub, next_id }
    }

    /// The hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// `/hubs/notifications` and `POST /api/notifications`.
    pub fn routes(&self) -> Router {
        let service = self
            .hub
            .clone()
            .into_service()
            .with_authentication(Arc::new(identify));
        let ctx = self.hub.context();
        let ids = self.next_id.clone();
        Router::new()
            .nest_service("/hubs/notifications", service)
            .route(
                "/api/notifications",
                post(move |body: axum::body::Bytes| {
                    let (ctx, ids) = (ctx.clone(), ids.clone());
                    async move { post_notification(ctx, ids, body).await }
                }),
            )
    }
}

/// The "authentication" hook: the `user` query parameter names the user. Always accepts.
fn identify(_token: Option<&str>, request: &RequestInfo) -> Option<Principal> {
    let user_id = request.query("user").filter(|u| valid_name(u));
    Some(Principal {
        user_id,
        claims: Vec::new(),
    })
}

/// Validates and sends one notification; returns it and a description of its target.
async fn deliver(
    ctx: &HubContext,
    ids: &AtomicU64,
    req: NotificationRequest,
) -> Result<(Notification, String), String> {
    let title = req.title.trim().to_owned();
    if title.is_empty() || title.chars().count() > MAX_TITLE {
        return Err(format!("a title is 1 to {MAX_TITLE} characters"));
    }
    if req.body.chars().count() > MAX_BODY {
        return Err(format!("a body is at most {MAX_BODY} characters"));
    }
    let level = level(req.level.as_deref())?;
    let user = req.user.filter(|u| !u.is_empty());
    let group = req.group.filter(|g| !g.is_empty());
    for name in user.iter().chain(group.iter()) {
        if !valid_name(name) {
            return Err(format!(
                "'{name}' is not a valid user or group name (1 to {MAX_NAME} letters, digits, '-', '_', '.', '@')"
            ));
        }
    }
    let notification = Notification {
        id: ids.fetch_add(1, Ordering::Relaxed),
        title,
        body: req.body,
        level,
        user: user.clone(),
        group: group.clone(),
        timestamp_ms: now_ms(),
    };
    let clients = ctx.clients();
    let (proxy, target) = match (&user, &group) {
        (Some(u), None) => (clients.user(u), format!("user:{u}")),
        (None, Some(g)) => (clients.group(format!("group:{g}")), format!("group:{g}")),
        (Some(_), Some(_)) => return Err("give a user or a group, not both".to_owned()),
        (None, None) => (clients.all(), "all".to_owned()),
    };
    proxy
        .send("ReceiveNotification", (&notification,))
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(id = notification.id, %target, level, "notification sent");
    Ok((notification, target))
}

async fn post_notification(
    ctx: HubContext,
    ids: Arc<AtomicU64>,
    body: axum::body::Bytes,
) -> Response {
    let req: NotificationRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({ "error": format!("invalid JSON body: {e}") })),
            )
                .into_response();
        }
    };
    match deliver(&ctx, &ids, req).await {
        Ok((n, target)) => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({ "id": n.id, "target": target })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({ "error": e })),
        )
            .into_response(),
    }
}
