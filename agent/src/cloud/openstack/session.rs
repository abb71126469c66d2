//! The HTTP session: Keystone v3 token (password or application credential, project or
//! domain scope), endpoint selection from the catalog (service type, interface, region),
//! TLS (CA bundle, insecure), and every call retried with exponential backoff and full
//! jitter on connection errors, 5xx and 429 (honouring `Retry-After`) up to a deadline;
//! a token is re-issued shortly before it expires and once on a 401.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::cloudconfig::{AuthMethod, CloudConfig, Secret};
use super::error::service_message;
use super::Error;

/// Timeouts and retry bounds of every call.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// One HTTP attempt.
    pub request_timeout: Duration,
    /// All attempts of one call together.
    pub deadline: Duration,
    /// First backoff; doubles per attempt up to `max_backoff` (full jitter).
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            request_timeout: Duration::from_secs(60),
            deadline: Duration::from_secs(300),
            base_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// The OpenStack services osm calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Identity,
    Compute,
    BlockStorage,
    Network,
    Image,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Identity => "Keystone",
            Service::Compute => "Nova",
            Service::BlockStorage => "Cinder",
            Service::Network => "Neutron",
            Service::Image => "Glance",
        }
    }
    /// Catalog types, preferred first.
    fn catalog_types(self) -> &'static [&'static str] {
        match self {
            Service::Identity => &["identity"],
            Service::Compute => &["compute"],
            Service::BlockStorage => &["block-storage", "volumev3", "volume"],
            Service::Network => &["network"],
            Service::Image => &["image"],
        }
    }
}

/// Microversions osm is written against (all in Nova 2.79+ / Cinder 3.50+, i.e. Train on).
const NOVA_MICROVERSION: &str = "2.79";
const CINDER_MICROVERSION: &str = "3.50";

#[derive(Debug, Clone, Deserialize)]
struct CatalogEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    endpoints: Vec<CatalogEndpoint>,
}

#[derive(Debug, Clone, Deserialize)]
struct CatalogEndpoint {
    interface: String,
    #[serde(default)]
    region_id: Option<String>,
    #[serde(default)]
    region: Option<String>,
    url: String,
}

#[derive(Clone)]
struct Token {
    value: Secret,
    issued: Instant,
    /// When to re-issue: a few minutes before the real expiry.
    refresh_at: Instant,
    catalog: Vec<CatalogEntry>,
    project_id: Option<String>,
    user_id: String,
    generation: u64,
}

/// A reply: status, headers and body (already read).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub url: String,
}

impl Reply {
    pub fn json<T: for<'de> Deserialize<'de>>(&self, service: Service) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| Error::Decode {
            service: service.name(),
            url: self.url.clone(),
            message: e.to_string(),
        })
    }
}

/// A body for [`Session::call`].
pub enum Body {
    None,
    Json(Value),
    /// Raw bytes with a content type (Glance uploads).
    Bytes(Vec<u8>, &'static str),
}

pub struct Session {
    cfg: CloudConfig,
    http: reqwest::Client,
    policy: RetryPolicy,
    token: Mutex<Option<Token>>,
    generation: AtomicU64,
    rng: AtomicU64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("cloud", &self.cfg.name).finish()
    }
}

impl Session {
    pub fn new(cfg: CloudConfig, policy: RetryPolicy) -> Result<Session, Error> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10).min(policy.request_timeout))
            .user_agent(concat!("osm-agent/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(cfg.insecure);
        if let Some(ca) = &cfg.cacert {
            let pem =
                std::fs::read(ca).map_err(|e| Error::Config(format!("{}: cacert {}: {e}", cfg.name, ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Config(format!("{}: cacert {}: {e}", cfg.name, ca.display())))?;
            if certs.is_empty() {
                return Err(Error::Config(format!(
                    "{}: cacert {} holds no PEM certificate",
                    cfg.name,
                    ca.display()
                )));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b
            .build()
            .map_err(|e| Error::Config(format!("{}: HTTP client: {e}", cfg.name)))?;
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        Ok(Session {
            cfg,
            http,
            policy,
            token: Mutex::new(None),
            generation: AtomicU64::new(0),
            rng: AtomicU64::new(seed),
        })
    }

    pub fn cloud(&self) -> &CloudConfig {
        &self.cfg
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Authenticate now (also proves the credentials); returns the project id of the token.
    pub async fn authenticate(&self) -> Result<Option<String>, Error> {
        Ok(self.token(None).await?.project_id)
    }

    pub async fn project_id(&self) -> Result<String, Error> {
        self.token(None).await?.project_id.ok_or_else(|| {
            Error::Config(format!(
                "{}: the token is not scoped to a project; set project_name (or project_id) and its domain",
                self.cfg.name
            ))
        })
    }

    pub async fn user_id(&self) -> Result<String, Error> {
        Ok(self.token(None).await?.user_id)
    }

    /// Forget the token so the next call issues a new one (tests, and after a 401).
    pub async fn invalidate_token(&self) {
        *self.token.lock().await = None;
    }

    /// The current token, issuing a new one when there is none, it is due for refresh,
    /// or it is the one (`stale`) a service just refused.
    async fn token(&self, stale: Option<u64>) -> Result<Token, Error> {
        let mut slot = self.token.lock().await;
        if let Some(t) = slot.as_ref() {
            let refused = stale == Some(t.generation);
            if !refused && Instant::now() < t.refresh_at {
                return Ok(t.clone());
            }
        }
        let t = self.issue_token().await?;
        *slot = Some(t.clone());
        Ok(t)
    }

    async fn issue_token(&self) -> Result<Token, Error> {
        let body = self.auth_body();
        let url = format!("{}/auth/tokens", self.cfg.auth_url);
        let reply = self
            .send_with_retries(Service::Identity, Method::POST, &url, &Body::Json(body), None)
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(Error::Api { status, message, .. }) if status == 401 || status == 403 || status == 400 => {
                return Err(Error::AuthRejected {
                    cloud: self.cfg.name.clone(),
                    auth_url: self.cfg.auth_url.clone(),
                    status,
                    message,
                })
            }
            Err(e) => return Err(e),
        };
        let value = reply
            .headers
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::Decode {
                service: "Keystone",
                url: url.clone(),
                message: "no X-Subject-Token header".into(),
            })?
            .to_string();
        #[derive(Deserialize)]
        struct R {
            token: T,
        }
        #[derive(Deserialize)]
        struct T {
            expires_at: String,
            issued_at: Option<String>,
            #[serde(default)]
            catalog: Vec<CatalogEntry>,
            project: Option<Id>,
            user: Id,
        }
        #[derive(Deserialize)]
        struct Id {
            id: String,
        }
        let r: R = reply.json(Service::Identity)?;
        let now = Instant::now();
        // Lifetime from Keystone's own clock (issued_at → expires_at), so clock skew between
        // hosts does not matter; re-issue when 10 % (at least 1 min, at most 5 min) remain.
        let lifetime = match (
            r.token.issued_at.as_deref().and_then(parse_rfc3339),
            parse_rfc3339(&r.token.expires_at),
        ) {
            (Some(i), Some(e)) if e > i => Duration::from_secs((e - i) as u64),
            _ => Duration::from_secs(3600),
        };
        let margin = (lifetime / 10)
            .clamp(Duration::from_secs(60), Duration::from_secs(300))
            .min(lifetime / 2);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(cloud = %self.cfg.name, lifetime_s = lifetime.as_secs(), "issued a Keystone token");
        Ok(Token {
            value: Secret::new(value),
            issued: now,
            refresh_at: now + lifetime - margin,
            catalog: r.token.catalog,
            project_id: r.token.project.map(|p| p.id),
            user_id: r.token.user.id,
            generation,
        })
    }

    fn auth_body(&self) -> Value {
        let c = &self.cfg;
        let user_domain = |name: &Option<String>, id: &Option<String>| match (id, name) {
            (Some(id), _) => json!({ "id": id }),
            (None, Some(n)) => json!({ "name": n }),
            (None, None) => json!({ "id": "default" }),
        };
        let identity = match &c.auth {
            AuthMethod::Password {
                username,
                user_id,
                password,
                user_domain_name,
                user_domain_id,
            } => {
                let user = match (user_id, username) {
                    (Some(id), _) => json!({ "id": id, "password": password.expose() }),
                    (None, Some(name)) => json!({
                        "name": name,
                        "domain": user_domain(user_domain_name, user_domain_id),
                        "password": password.expose(),
                    }),
                    (None, None) => json!({}),
                };
                json!({ "methods": ["password"], "password": { "user": user } })
            }
            AuthMethod::ApplicationCredential {
                id,
                name,
                secret,
                username,
                user_id,
                user_domain_name,
                user_domain_id,
            } => {
                let cred = match (id, name) {
                    (Some(id), _) => json!({ "id": id, "secret": secret.expose() }),
                    (None, Some(n)) => {
                        let user = match (user_id, username) {
                            (Some(uid), _) => json!({ "id": uid }),
                            (None, un) => {
                                json!({ "name": un, "domain": user_domain(user_domain_name, user_domain_id) })
                            }
                        };
                        json!({ "name": n, "secret": secret.expose(), "user": user })
                    }
                    (None, None) => json!({}),
                };
                json!({ "methods": ["application_credential"], "application_credential": cred })
            }
        };
        let s = &c.scope;
        let scope = if let Some(id) = &s.project_id {
            Some(json!({ "project": { "id": id } }))
        } else if let Some(name) = &s.project_name {
            let domain = match (&s.project_domain_id, &s.project_domain_name) {
                (Some(id), _) => json!({ "id": id }),
                (None, Some(n)) => json!({ "name": n }),
                (None, None) => match (&s.domain_id, &s.domain_name) {
                    (Some(id), _) => json!({ "id": id }),
                    (None, Some(n)) => json!({ "name": n }),
                    (None, None) => json!({ "id": "default" }),
                },
            };
            Some(json!({ "project": { "name": name, "domain": domain } }))
        } else if let Some(id) = &s.domain_id {
            Some(json!({ "domain": { "id": id } }))
        } else {
            s.domain_name.as_ref().map(|n| json!({ "domain": { "name": n } }))
        };
        let mut auth = json!({ "identity": identity });
        if let Some(scope) = scope {
            auth["scope"] = scope;
        }
        json!({ "auth": auth })
    }

    /// The endpoint of `service` from the token's catalog (interface, region), normalised
    /// to the API version osm speaks.
    fn endpoint(&self, t: &Token, service: Service) -> Result<String, Error> {
        let c = &self.cfg;
        for kind in service.catalog_types() {
            let Some(entry) = t.catalog.iter().find(|e| e.kind == *kind) else {
                continue;
            };
            let ep = entry.endpoints.iter().find(|e| {
                e.interface == c.interface
                    && c.region_name.as_ref().is_none_or(|r| {
                        e.region_id.as_deref() == Some(r.as_str()) || e.region.as_deref() == Some(r.as_str())
                    })
            });
            if let Some(ep) = ep {
                let url = ep.url.trim_end_matches('/').to_string();
                return Ok(match service {
                    Service::Network if !url.ends_with("/v2.0") => format!("{url}/v2.0"),
                    Service::Image if !url.ends_with("/v2") => format!("{url}/v2"),
                    Service::BlockStorage => match &t.project_id {
                        // Cinder before 3.67 wants the project in the path.
                        Some(p) if !url.contains(p.as_str()) => format!("{url}/{p}"),
                        _ => url,
                    },
                    _ => url,
                });
            }
        }
        Err(Error::NoEndpoint {
            cloud: c.name.clone(),
            service: service.name(),
            interface: c.interface.clone(),
            region: c
                .region_name
                .as_ref()
                .map(|r| format!(" in region {r}"))
                .unwrap_or_default(),
        })
    }

    /// The endpoint of a service (for messages and tests).
    pub async fn endpoint_of(&self, service: Service) -> Result<String, Error> {
        let t = self.token(None).await?;
        self.endpoint(&t, service)
    }

    /// One API call: `path` is relative to the service's endpoint. Retried as described
    /// in the module doc; a 401 re-issues the token once.
    pub async fn call(&self, service: Service, method: Method, path: &str, body: Body) -> Result<Reply, Error> {
        self.call_budget(service, method, path, body, None).await
    }

    async fn call_budget(
        &self,
        service: Service,
        method: Method,
        path: &str,
        body: Body,
        budget: Option<Duration>,
    ) -> Result<Reply, Error> {
        let start = Instant::now();
        let mut reissued = 0u32;
        loop {
            let t = self.token(None).await?;
            let url = format!("{}{}", self.endpoint(&t, service)?, path);
            let mut headers = HeaderMap::new();
            headers.insert("x-auth-token", hv(t.value.expose())?);
            match service {
                Service::Compute => {
                    headers.insert("openstack-api-version", hv(&format!("compute {NOVA_MICROVERSION}"))?);
                    headers.insert("x-openstack-nova-api-version", hv(NOVA_MICROVERSION)?);
                }
                Service::BlockStorage => {
                    headers.insert("openstack-api-version", hv(&format!("volume {CINDER_MICROVERSION}"))?);
                }
                _ => {}
            }
            let remaining = budget.unwrap_or_else(|| self.policy.deadline.saturating_sub(start.elapsed()));
            match self
                .send_with_retries_until(service, method.clone(), &url, &body, Some(headers), remaining)
                .await
            {
                Err(Error::Api { status: 401, .. }) if reissued < 2 => {
                    tracing::info!(cloud = %self.cfg.name, service = service.name(), age_s = t.issued.elapsed().as_secs(), "token refused (401); issuing a new one");
                    reissued += 1;
                    // Only replace the token if nobody else did meanwhile.
                    self.token(Some(t.generation)).await?;
                }
                other => return other,
            }
        }
    }

    /// One attempt only (a 401 still re-issues the token once): for creates whose retry
    /// must look before it makes a second resource.
    pub async fn call_once(&self, service: Service, method: Method, path: &str, body: Body) -> Result<Reply, Error> {
        self.call_budget(service, method, path, body, Some(Duration::ZERO))
            .await
    }

    async fn send_with_retries(
        &self,
        service: Service,
        method: Method,
        url: &str,
        body: &Body,
        headers: Option<HeaderMap>,
    ) -> Result<Reply, Error> {
        self.send_with_retries_until(service, method, url, body, headers, self.policy.deadline)
            .await
    }

    async fn send_with_retries_until(
        &self,
        service: Service,
        method: Method,
        url: &str,
        body: &Body,
        headers: Option<HeaderMap>,
        budget: Duration,
    ) -> Result<Reply, Error> {
        let start = Instant::now();
        let deadline = start + budget;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let mut req = self
                .http
                .request(method.clone(), url)
                .timeout(if budget.is_zero() {
                    self.policy.request_timeout
                } else {
                    self.policy.request_timeout.min(left.max(Duration::from_secs(1)))
                })
                .header("accept", "application/json");
            if let Some(h) = &headers {
                req = req.headers(h.clone());
            }
            req = match body {
                Body::None => req,
                Body::Json(v) => req.json(v),
                Body::Bytes(b, ct) => req.header("content-type", *ct).body(b.clone()),
            };
            let (retry_after, failure) = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let resp_headers = resp.headers().clone();
                    let final_url = resp.url().to_string();
                    match resp.bytes().await {
                        Ok(bytes) => {
                            let reply = Reply {
                                status,
                                headers: resp_headers,
                                body: bytes.to_vec(),
                                url: final_url,
                            };
                            if status.is_success() {
                                return Ok(reply);
                            }
                            let err = Error::Api {
                                service: service.name(),
                                method: method.to_string(),
                                url: url.to_string(),
                                status: status.as_u16(),
                                message: service_message(&reply.body),
                            };
                            let retryable = status == StatusCode::TOO_MANY_REQUESTS
                                || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED);
                            if !retryable {
                                return Err(err);
                            }
                            (retry_after(&reply.headers), err)
                        }
                        Err(e) => (None, self.unreachable(service, url, &e, attempt, start)),
                    }
                }
                Err(e) => (None, self.unreachable(service, url, &e, attempt, start)),
            };
            let backoff = self.backoff(attempt);
            let wait = retry_after.unwrap_or(backoff);
            if Instant::now() + wait >= deadline {
                return Err(match failure {
                    Error::Unreachable {
                        service, url, cause, ..
                    } => Error::Unreachable {
                        service,
                        url,
                        cause,
                        attempts: attempt,
                        secs: start.elapsed().as_secs(),
                    },
                    Error::Api {
                        service,
                        method,
                        url,
                        status,
                        message,
                    } => Error::Api {
                        service,
                        method,
                        url,
                        status,
                        message: format!(
                            "{message} (gave up after {attempt} attempts in {}s)",
                            start.elapsed().as_secs()
                        ),
                    },
                    e => e,
                });
            }
            tracing::debug!(service = service.name(), %method, url, attempt, wait_ms = wait.as_millis() as u64, error = %failure, "retrying");
            tokio::time::sleep(wait).await;
        }
    }

    fn unreachable(&self, service: Service, url: &str, e: &reqwest::Error, attempts: u32, start: Instant) -> Error {
        // The innermost cause says it best ("Connection refused", "connection reset").
        let mut cause = e.to_string();
        let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
        while let Some(s) = src {
            cause = s.to_string();
            src = s.source();
        }
        if e.is_timeout() {
            cause = format!("no reply within {}s", self.policy.request_timeout.as_secs());
        }
        // Strip the query (it may hold filters) but keep scheme://host:port/path.
        let url = url.split('?').next().unwrap_or(url).to_string();
        Error::Unreachable {
            service: service.name(),
            url,
            cause,
            attempts,
            secs: start.elapsed().as_secs(),
        }
    }

    /// Full jitter: uniform in [base·2^(n-1) / 2, base·2^(n-1)], capped.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .policy
            .base_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.policy.max_backoff);
        let r = self.next_random();
        let half = exp / 2;
        half + Duration::from_nanos((r % (half.as_nanos() as u64).max(1)).max(1))
    }

    fn next_random(&self) -> u64 {
        // xorshift64*: jitter only, no cryptographic need.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn hv(s: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(s).map_err(|_| Error::Invalid("a header value holds characters HTTP does not allow".into()))
}

/// `Retry-After` in seconds (the HTTP-date form is rare from OpenStack; treated as 1 s).
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get("retry-after")?.to_str().ok()?.trim();
    Some(match v.parse::<f64>() {
        Ok(s) if s >= 0.0 => Duration::from_secs_f64(s.min(120.0)),
        _ => Duration::from_secs(1),
    })
}

/// Seconds since the epoch of Keystone's `2024-01-02T03:04:05.000000Z`.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.trim_end_matches('Z');
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let time = time.split(['+', '.']).next()?;
    let mut t = time.split(':').map(|x| x.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next().unwrap_or(Ok(0)).ok()?);
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-03-01T01:00:00.000000Z"), Some(1709254800));
    }

    #[test]
    fn backoff_grows_with_jitter_and_cap() {
        let cfg = CloudConfig::from_dst_cloud("auth: {auth_url: 'http://x', username: u, password: p}").unwrap();
        let s = Session::new(cfg, RetryPolicy::default()).unwrap();
        for n in 1..20 {
            let b = s.backoff(n);
            let exp = Duration::from_millis(250)
                .saturating_mul(1 << (n - 1).min(16))
                .min(Duration::from_secs(10));
            assert!(b >= exp / 2 && b <= exp, "{n}: {b:?}");
        }
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
    }
}
