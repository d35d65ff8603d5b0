//! The negotiate payloads (`POST {base}/negotiate`) and query-string helpers; no HTTP here.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::TransferFormat;

/// A transport the server offers, in the client's order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportType {
    /// WebSockets: full duplex, text or binary frames.
    WebSockets,
    /// Server-Sent Events for server → client, POST for client → server; text only.
    ServerSentEvents,
    /// Long polling GETs for server → client, POST for client → server.
    LongPolling,
}

impl TransportType {
    /// Every transport, in the order .NET lists them (the client tries them in this order).
    pub const ALL: [Self; 3] = [Self::WebSockets, Self::ServerSentEvents, Self::LongPolling];

    /// The exact, case-sensitive name used in negotiate responses.
    pub fn name(self) -> &'static str {
        match self {
            Self::WebSockets => "WebSockets",
            Self::ServerSentEvents => "ServerSentEvents",
            Self::LongPolling => "LongPolling",
        }
    }

    /// Looks a transport up by its exact name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// What the transport can carry: SSE cannot carry binary, so it never serves MessagePack.
    pub fn transfer_formats(self) -> &'static [TransferFormat] {
        match self {
            Self::ServerSentEvents => &[TransferFormat::Text],
            Self::WebSockets | Self::LongPolling => &[TransferFormat::Text, TransferFormat::Binary],
        }
    }
}

/// A successful negotiate response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiateResponse {
    /// 0 or 1; with 0 the client uses `connection_id` as the transport `id`.
    pub negotiate_version: u32,
    /// The public connection id (what hub code sees).
    pub connection_id: String,
    /// The secret transport id (v1 only; never written for v0).
    pub connection_token: Option<String>,
    /// The transports offered, in preference order.
    pub available_transports: Vec<TransportType>,
    /// Whether stateful reconnect was granted (only ever when the client asked for it).
    pub use_stateful_reconnect: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    use_stateful_reconnect: bool,
    negotiate_version: u32,
    connection_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_token: Option<&'a str>,
    available_transports: Vec<TransportOut>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TransportOut {
    transport: &'static str,
    transfer_formats: Vec<&'static str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponseIn {
    #[serde(default)]
    use_stateful_reconnect: bool,
    #[serde(default)]
    negotiate_version: u32,
    connection_id: Option<String>,
    connection_token: Option<String>,
    #[serde(default)]
    available_transports: Vec<TransportIn>,
    error: Option<String>,
    url: Option<String>,
    #[serde(rename = "ProtocolVersion")]
    protocol_version: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct TransportIn {
    transport: String,
}

impl NegotiateResponse {
    /// Serializes the response with .NET's property order.
    pub fn to_json(&self) -> Vec<u8> {
        let token = self
            .connection_token
            .as_deref()
            .filter(|_| self.negotiate_version > 0);
        let out = ResponseOut {
            use_stateful_reconnect: self.use_stateful_reconnect,
            negotiate_version: self.negotiate_version,
            connection_id: &self.connection_id,
            connection_token: token,
            available_transports: self
                .available_transports
                .iter()
                .map(|t| TransportOut {
                    transport: t.name(),
                    transfer_formats: t.transfer_formats().iter().map(|f| f.name()).collect(),
                })
                .collect(),
        };
        serde_json::to_vec(&out).unwrap_or_default()
    }

    /// Parses a negotiate response as the JS client does (for tests and tools).
    ///
    /// Unknown transports are skipped; an `error`, a redirect `url` or a classic-SignalR
    /// `ProtocolVersion` is an `Err` with a readable text.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let r: ResponseIn = serde_json::from_slice(bytes)
            .map_err(|e| format!("Invalid negotiate response: {e}"))?;
        if let Some(error) = r.error {
            return Err(error);
        }
        if let Some(url) = r.url {
            return Err(format!("Negotiate redirected to '{url}'."));
        }
        if r.protocol_version.is_some() {
            return Err("Detected a connection attempt to an ASP.NET SignalR Server. This client only supports connecting to an ASP.NET Core SignalR Server.".into());
        }
        let connection_id = r
            .connection_id
            .ok_or("Negotiate response has no connectionId.")?;
        Ok(Self {
            negotiate_version: r.negotiate_version,
            connection_id,
            connection_token: r.connection_token,
            available_transports: r
                .available_transports
                .iter()
                .filter_map(|t| TransportType::from_name(&t.transport))
                .collect(),
            use_stateful_reconnect: r.use_stateful_reconnect,
        })
    }
}

/// The redirect response: the client negotiates again at `url`, then uses `accessToken` as its
/// bearer token.
pub fn redirect_json(url: &str, access_token: Option<&str>) -> Vec<u8> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Redirect<'a> {
        url: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        access_token: Option<&'a str>,
    }
    serde_json::to_vec(&Redirect { url, access_token }).unwrap_or_default()
}

/// A negotiate failure, which .NET still sends with status 200.
pub fn error_json(msg: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Error<'a> {
        error: &'a str,
    }
    serde_json::to_vec(&Error { error: msg }).unwrap_or_default()
}

/// What the negotiate query string asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NegotiateQuery {
    /// The negotiate version to answer with: the client's, capped at 1.
    pub negotiate_version: u32,
    /// Whether the client asked for stateful reconnect (the server may still refuse it).
    pub use_stateful_reconnect: bool,
}

/// The highest negotiate version this server speaks.
const MAX_NEGOTIATE_VERSION: u32 = 1;

/// Reads `negotiateVersion` and `useStatefulReconnect` as .NET does.
///
/// Keys are case-insensitive; a missing version is 0; a version above 1 is answered with 1; a
/// non-integer or negative version is an error whose text is .NET's (suitable for
/// [`error_json`]).
pub fn parse_negotiate_query(query: Option<&str>) -> Result<NegotiateQuery, String> {
    let query = query.unwrap_or("");
    let negotiate_version = match query_param(query, "negotiateVersion") {
        None => 0,
        Some(raw) => match raw.trim().parse::<i32>() {
            Ok(v) if v < 0 => {
                return Err(format!(
                    "The client requested version '{v}', but the server does not support this \
                     version."
                ));
            }
            Ok(v) => (v as u32).min(MAX_NEGOTIATE_VERSION),
            Err(_) => {
                return Err(format!(
                    "The client requested an invalid protocol version '{raw}'"
                ));
            }
        },
    };
    let use_stateful_reconnect = query_param(query, "useStatefulReconnect")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    Ok(NegotiateQuery {
        negotiate_version,
        use_stateful_reconnect,
    })
}

/// The first value of query parameter `name` (key compared case-insensitively), percent-decoded.
///
/// `+` decodes to a space, as in ASP.NET; an invalid `%` escape is kept as written. `query` may
/// start with `?`.
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    let query = query.strip_prefix('?').unwrap_or(query);
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            percent_decode(key)
                .eq_ignore_ascii_case(name)
                .then(|| percent_decode(value))
        })
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(version: u32, stateful: bool) -> NegotiateResponse {
        NegotiateResponse {
            negotiate_version: version,
            connection_id: "id1".into(),
            connection_token: Some("tok1".into()),
            available_transports: TransportType::ALL.to_vec(),
            use_stateful_reconnect: stateful,
        }
    }

    const TRANSPORTS: &str = "\"availableTransports\":[\
        {\"transport\":\"WebSockets\",\"transferFormats\":[\"Text\",\"Binary\"]},\
        {\"transport\":\"ServerSentEvents\",\"transferFormats\":[\"Text\"]},\
        {\"transport\":\"LongPolling\",\"transferFormats\":[\"Text\",\"Binary\"]}]";

    #[test]
    fn golden_responses() {
        assert_eq!(
            String::from_utf8(response(1, true).to_json()).unwrap(),
            format!(
                "{{\"useStatefulReconnect\":true,\"negotiateVersion\":1,\"connectionId\":\"id1\",\
                 \"connectionToken\":\"tok1\",{TRANSPORTS}}}"
            )
        );
        assert_eq!(
            String::from_utf8(response(1, false).to_json()).unwrap(),
            format!(
                "{{\"negotiateVersion\":1,\"connectionId\":\"id1\",\"connectionToken\":\"tok1\",\
                 {TRANSPORTS}}}"
            )
        );
        assert_eq!(
            String::from_utf8(response(0, false).to_json()).unwrap(),
            format!("{{\"negotiateVersion\":0,\"connectionId\":\"id1\",{TRANSPORTS}}}")
        );
        assert_eq!(
            redirect_json("https://other/hub?x=y", Some("jwt")),
            b"{\"url\":\"https://other/hub?x=y\",\"accessToken\":\"jwt\"}"
        );
        assert_eq!(redirect_json("u", None), b"{\"url\":\"u\"}");
        assert_eq!(error_json("no \"way\""), b"{\"error\":\"no \\\"way\\\"\"}");
    }

    #[test]
    fn client_side_parse() {
        for r in [response(1, true), response(1, false)] {
            assert_eq!(NegotiateResponse::from_json(&r.to_json()), Ok(r));
        }
        let mut v0 = response(0, false);
        let parsed = NegotiateResponse::from_json(&v0.to_json()).unwrap();
        v0.connection_token = None;
        assert_eq!(parsed, v0);
        let odd = br#"{"connectionId":"a","availableTransports":[{"transport":"Carrier","transferFormats":[]},{"transport":"LongPolling","transferFormats":["Text"]}],"x":1}"#;
        assert_eq!(
            NegotiateResponse::from_json(odd)
                .unwrap()
                .available_transports,
            vec![TransportType::LongPolling]
        );
        assert_eq!(
            NegotiateResponse::from_json(&error_json("nope")),
            Err("nope".into())
        );
        assert!(NegotiateResponse::from_json(&redirect_json("u", None)).is_err());
        assert!(
            NegotiateResponse::from_json(br#"{"ProtocolVersion":"1.5","connectionId":"a"}"#)
                .is_err()
        );
        assert!(NegotiateResponse::from_json(b"[").is_err());
    }

    #[test]
    fn transports() {
        assert_eq!(
            TransportType::ALL.map(TransportType::name),
            ["WebSockets", "ServerSentEvents", "LongPolling"]
        );
        for t in TransportType::ALL {
            assert_eq!(TransportType::from_name(t.name()), Some(t));
        }
        assert_eq!(TransportType::from_name("websockets"), None);
        assert_eq!(
            TransportType::ServerSentEvents.transfer_formats(),
            &[TransferFormat::Text]
        );
    }

    #[test]
    fn negotiate_query() {
        let q = |s: Option<&str>| parse_negotiate_query(s);
        assert_eq!(q(None), Ok(NegotiateQuery::default()));
        assert_eq!(q(Some("")), Ok(NegotiateQuery::default()));
        assert_eq!(
            q(Some("negotiateVersion=1&useStatefulReconnect=true")),
            Ok(NegotiateQuery {
                negotiate_version: 1,
                use_stateful_reconnect: true
            })
        );
        assert_eq!(
            q(Some("?NEGOTIATEVERSION=7&usestatefulreconnect=TRUE")),
            Ok(NegotiateQuery {
                negotiate_version: 1,
                use_stateful_reconnect: true
            })
        );
        assert_eq!(
            q(Some("negotiateVersion=0&useStatefulReconnect=yes")),
            Ok(NegotiateQuery::default())
        );
        assert_eq!(
            q(Some("negotiateVersion=abc")),
            Err("The client requested an invalid protocol version 'abc'".into())
        );
        assert_eq!(
            q(Some("negotiateVersion=-1")),
            Err(
                "The client requested version '-1', but the server does not support this version."
                    .into()
            )
        );
        assert!(q(Some("negotiateVersion=")).is_err());
    }

    #[test]
    fn query_params() {
        let query =
            "id=abc-_1&access_token=a%2Bb%20c+d&Flag&x=%zz%4&numRedirects=3&id=second&e=%C3%A9";
        assert_eq!(query_param(query, "ID").as_deref(), Some("abc-_1"));
        assert!(matches!(query_param(query, "id"), Some(Cow::Borrowed(_))));
        assert_eq!(
            query_param(query, "access_token").as_deref(),
            Some("a+b c d")
        );
        assert_eq!(query_param(query, "flag").as_deref(), Some(""));
        assert_eq!(query_param(query, "x").as_deref(), Some("%zz%4"));
        assert_eq!(query_param(query, "numredirects").as_deref(), Some("3"));
        assert_eq!(query_param(query, "e").as_deref(), Some("é"));
        assert_eq!(query_param(query, "missing"), None);
        assert_eq!(query_param("", "id"), None);
        assert_eq!(query_param("a%3D=1", "a=").as_deref(), Some("1"));
        assert_eq!(query_param("%FF=1&b=%FF", "b").as_deref(), Some("\u{FFFD}"));
    }
}
