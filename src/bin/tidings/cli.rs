//! Command line and environment: every flag also reads a `TIDINGS_*` variable.

use std::path::PathBuf;

use clap::Parser;

/// tidings: a SignalR-compatible real-time hub server, with its demo hubs and pages.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Cli {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "TIDINGS_LISTEN", default_value = "127.0.0.1:5000")]
    pub listen: String,

    /// The demo pages' folder (`js-client-demo`, holding `public/` and `node_modules/`).
    /// Defaults to `./js-client-demo`, else the one beside this crate's sources.
    #[arg(long, env = "TIDINGS_STATIC_DIR")]
    pub static_dir: Option<PathBuf>,

    /// Origins allowed to call the server from other sites (CORS, with credentials), comma
    /// separated. Empty (the default): same-origin pages only.
    #[arg(long, env = "TIDINGS_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// A Redis backplane (`redis://HOST:PORT`): several tidings nodes sharing it act as one
    /// hub, and the collaboration log lives in Redis Streams. Default: in-memory, one node.
    #[arg(long, env = "TIDINGS_REDIS")]
    pub redis: Option<String>,
}

impl Cli {
    /// The demo folder to serve.
    pub fn static_dir(&self) -> PathBuf {
        if let Some(dir) = &self.static_dir {
            return dir.clone();
        }
        let local = PathBuf::from("js-client-demo");
        if local.join("public").is_dir() {
            local
        } else {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js-client-demo")
        }
    }
}
