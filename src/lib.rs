//! # tidings
//!
//! A SignalR-compatible real-time hub server. Browsers, Node processes and apps using the
//! stock `@microsoft/signalr` client (JSON or MessagePack, over WebSockets, Server-Sent Events
//! or long polling) talk to hub methods written as Rust async functions.
//!
//! The crate is layered, each layer importing only the ones below it:
//! - [`protocol`]: the wire formats, pure (no IO): messages, JSON and MessagePack, handshake,
//!   negotiate;
//! - [`transport`]: WebSockets, Server-Sent Events and long polling behind one connection
//!   abstraction;
//! - [`HubService`]: the tower `Service` serving one path (negotiate, transports, status codes);
//! - [`Hub`], [`extract`], [`filter`]: the hub model, with axum-style extractors;
//! - [`Clients`], [`Groups`], [`HubContext`]: fan-out, from inside a hub or from anywhere.
//!
//! ```
//! use tidings::{Args, Caller, Hub};
//!
//! let hub = Hub::builder()
//!     .method("Echo", |Args(text): Args<String>| async move { text })
//!     .method("WhoAmI", |caller: Caller| async move { caller.connection_id().to_owned() })
//!     .build();
//! let service = hub.into_service(); // axum: Router::new().nest_service("/hubs/echo", service)
//! # let _ = service;
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod backplane;
pub mod clients;
mod connection;
pub mod context;
mod dispatch;
pub mod error;
pub mod eventlog;
pub mod extract;
pub mod filter;
#[doc(hidden)]
pub mod fuzzing;
pub mod handler;
pub mod hub;
pub mod options;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod service;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod transport;
pub mod value;

pub use clients::{ClientProxy, Clients, Groups, SingleClientProxy};
pub use context::{HubContext, Presence};
pub use error::{Error, HubError};
pub use extract::{Args, Caller, CancellationToken, ClientStream, State};
pub use hub::{Hub, HubBuilder};
pub use options::{HubOptions, TransportOptions};
pub use service::HubService;
