//! The demo pages (`js-client-demo/public` at `/`), the stock browser bundles from
//! `js-client-demo/node_modules` at `/vendor/…`, and the CORS policy.

use std::path::Path;

use axum::Router;
use axum::http::{HeaderValue, Method, header};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;

/// Each vendored bundle: the URL prefix and its folder under `node_modules`.
const VENDOR: [(&str, &str); 3] = [
    ("/vendor/signalr", "@microsoft/signalr/dist/browser"),
    (
        "/vendor/signalr-protocol-msgpack",
        "@microsoft/signalr-protocol-msgpack/dist/browser",
    ),
    ("/vendor/uplot", "uplot/dist"),
];

/// Adds the pages and the vendored bundles to `app`, as its fallback.
pub fn serve_pages(mut app: Router, dir: &Path) -> Router {
    let public = dir.join("public");
    if !public.is_dir() {
        tracing::warn!(dir = %public.display(), "demo pages not found; serving the API only");
        return app;
    }
    let modules = dir.join("node_modules");
    for (prefix, sub) in VENDOR {
        let folder = modules.join(sub);
        if !folder.is_dir() {
            tracing::warn!(
                folder = %folder.display(),
                "browser bundle missing: run `npm ci --prefix js-client-demo` (scripts/run.sh does)"
            );
        }
        app = app.nest_service(prefix, ServeDir::new(folder));
    }
    tracing::info!(dir = %public.display(), "serving the demo pages at /");
    app.fallback_service(ServeDir::new(public))
}

/// Allows `origins` (with credentials: the SignalR client sends them, so no wildcard).
pub fn cors(app: Router, origins: &[String]) -> Router {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter(|o| !o.is_empty())
        .filter_map(|o| match HeaderValue::from_str(o.trim()) {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::warn!(origin = %o, "ignoring an invalid CORS origin");
                None
            }
        })
        .collect();
    if origins.is_empty() {
        return app;
    }
    app.layer(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers([header::CONTENT_TYPE]),
    )
}
