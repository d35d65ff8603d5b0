//! Authentication: who a request is from, decided once per HTTP request (negotiate and every
//! transport request), from a bearer token in `Authorization: Bearer …` or, for browsers'
//! WebSockets and EventSource, the `access_token` query parameter.
//!
//! [`JwtAuth`] validates HS256/RS256 JSON Web Tokens; any other scheme plugs in as a closure
//! (see [`crate::service::Authenticate`]). Tokens never appear in logs.

use std::sync::Arc;

use crate::service::Authenticate;
use crate::transport::{Principal, RequestInfo};

/// The claim .NET uses for the user id (`ClaimTypes.NameIdentifier`).
pub const NAME_IDENTIFIER: &str =
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier";

/// Builds a [`Principal`] from JWT claims: every string (or number, or boolean) claim is
/// kept; the user id is the `sub` claim, else the .NET name-identifier claim.
pub fn principal_from_claims(claims: &serde_json::Map<String, serde_json::Value>) -> Principal {
    let claims: Vec<(String, String)> = claims
        .iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::String(s) => Some((k.clone(), s.clone())),
            serde_json::Value::Number(n) => Some((k.clone(), n.to_string())),
            serde_json::Value::Bool(b) => Some((k.clone(), b.to_string())),
            _ => None,
        })
        .collect();
    let user_id = ["sub", NAME_IDENTIFIER]
        .iter()
        .find_map(|k| claims.iter().find(|(c, _)| c == k).map(|(_, v)| v.clone()));
    Principal { user_id, claims }
}

/// Who may invoke a method: a predicate over the caller's principal (`None` when the path
/// does not authenticate). A refused invocation gets ASP.NET's error text
/// `Failed to invoke '<method>' because user is unauthorized`.
#[derive(Clone)]
pub struct Policy(Arc<PolicyFn>);

type PolicyFn = dyn Fn(Option<&Principal>) -> bool + Send + Sync;

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Policy")
    }
}

impl Policy {
    /// A policy from a predicate.
    pub fn new(f: impl Fn(Option<&Principal>) -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Any authenticated user (ASP.NET `[Authorize]`).
    pub fn authenticated() -> Self {
        Self::new(|p| p.is_some_and(|p| p.user_id.is_some()))
    }

    /// Users having claim `kind` with value `value` (e.g. a role).
    pub fn claim(kind: impl Into<String>, value: impl Into<String>) -> Self {
        let (kind, value) = (kind.into(), value.into());
        Self::new(move |p| {
            p.is_some_and(|p| p.claims.iter().any(|(k, v)| *k == kind && *v == value))
        })
    }

    /// Whether `principal` passes.
    pub fn allows(&self, principal: Option<&Principal>) -> bool {
        (self.0)(principal)
    }
}

/// Validates JSON Web Tokens (HS256 with a shared secret, or RS256 with a public key).
///
/// ```
/// use tidings::auth::JwtAuth;
/// let auth = JwtAuth::hs256(b"a secret of at least 32 bytes....").unwrap();
/// let token = auth.issue("alice", std::time::Duration::from_secs(60)).unwrap();
/// assert_eq!(auth.validate(&token).unwrap().user_id.as_deref(), Some("alice"));
/// ```
#[cfg(feature = "jwt")]
#[derive(Clone)]
pub struct JwtAuth {
    decoding: jsonwebtoken::DecodingKey,
    encoding: Option<jsonwebtoken::EncodingKey>,
    validation: jsonwebtoken::Validation,
    algorithm: jsonwebtoken::Algorithm,
}

#[cfg(feature = "jwt")]
impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "jwt")]
impl JwtAuth {
    /// HS256 with a shared secret; this validator can also [`JwtAuth::issue`] tokens.
    pub fn hs256(secret: &[u8]) -> Result<Self, jsonwebtoken::errors::Error> {
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.required_spec_claims = ["exp"].iter().map(|s| (*s).to_owned()).collect();
        validation.validate_aud = false;
        Ok(Self {
            decoding: jsonwebtoken::DecodingKey::from_secret(secret)?,
            encoding: Some(jsonwebtoken::EncodingKey::from_secret(secret)?),
            validation,
            algorithm: jsonwebtoken::Algorithm::HS256,
        })
    }

    /// RS256 with an RSA public key in PEM form.
    pub fn rs256_pem(public_key_pem: &[u8]) -> Result<Self, jsonwebtoken::errors::Error> {
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.validate_aud = false;
        Ok(Self {
            decoding: jsonwebtoken::DecodingKey::from_rsa_pem(public_key_pem)?,
            encoding: None,
            validation,
            algorithm: jsonwebtoken::Algorithm::RS256,
        })
    }

    /// Only tokens with this issuer pass.
    pub fn with_issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self
    }

    /// Only tokens for this audience pass.
    pub fn with_audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        self
    }

    /// Checks a token; `None` when it is invalid or expired.
    pub fn validate(&self, token: &str) -> Option<Principal> {
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &self.decoding,
            &self.validation,
        )
        .ok()?;
        Some(principal_from_claims(&data.claims))
    }

    /// Issues a token for `user` (as `sub` and the .NET name-identifier claim), valid for
    /// `lifetime`. Only for HS256 validators.
    pub fn issue(&self, user: &str, lifetime: std::time::Duration) -> Option<String> {
        let key = self.encoding.as_ref()?;
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs()
            + lifetime.as_secs();
        let claims = serde_json::json!({ "sub": user, NAME_IDENTIFIER: user, "exp": exp });
        jsonwebtoken::encode(&jsonwebtoken::Header::new(self.algorithm), &claims, key).ok()
    }

    /// The authentication hook for [`crate::HubService::with_authentication`].
    pub fn authenticate(self) -> Authenticate {
        Arc::new(move |token: Option<&str>, _req: &RequestInfo| self.validate(token?))
    }
}

#[cfg(all(test, feature = "jwt"))]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_validate_and_forged_ones_do_not() {
        let auth = JwtAuth::hs256(b"0123456789abcdef0123456789abcdef").unwrap();
        let token = auth
            .issue("testuser", std::time::Duration::from_secs(60))
            .unwrap();
        let p = auth.validate(&token).unwrap();
        assert_eq!(p.user_id.as_deref(), Some("testuser"));
        assert_eq!(p.claim(NAME_IDENTIFIER), Some("testuser"));
        let other = JwtAuth::hs256(b"another secret of thirty-two by.").unwrap();
        assert!(other.validate(&token).is_none());
        assert!(auth.validate("not.a.token").is_none());
        let past = serde_json::json!({ "sub": "x", "exp": 1_000_000_000u64 });
        let key = auth.encoding.clone().unwrap();
        let expired = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &past, &key).unwrap();
        assert!(auth.validate(&expired).is_none());
    }
}
