//! The real client: a [`Session`] plus the find-or-create and wait helpers the service
//! files share.
use std::future::Future;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use super::paging::DEFAULT_PAGE_SIZE;
use super::session::{Body, Reply, RetryPolicy, Service, Session};
use super::{CloudConfig, Error};

#[derive(Debug)]
pub struct Client {
    pub(super) session: Session,
    /// Items asked for per list page (paging.rs).
    pub(super) page_size: usize,
}

impl Client {
    pub fn new(cfg: CloudConfig, policy: RetryPolicy) -> Result<Client, Error> {
        Ok(Client {
            session: Session::new(cfg, policy)?,
            page_size: DEFAULT_PAGE_SIZE,
        })
    }

    /// Ask for `n` items per list page (at least 1); tests lower it to force several pages.
    pub fn with_page_size(mut self, n: usize) -> Client {
        self.page_size = n.max(1);
        self
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub(super) async fn get(&self, s: Service, path: &str) -> Result<Reply, Error> {
        self.session.call(s, Method::GET, path, Body::None).await
    }

    pub(super) async fn get_json<T: for<'de> serde::Deserialize<'de>>(
        &self,
        s: Service,
        path: &str,
    ) -> Result<T, Error> {
        self.get(s, path).await?.json(s)
    }

    /// A call retried on every transient failure (GET, PUT, DELETE, and POSTs that merge).
    pub(super) async fn send(&self, s: Service, m: Method, path: &str, body: Value) -> Result<Reply, Error> {
        self.session.call(s, m, path, Body::Json(body)).await
    }

    /// Find what an earlier try made, else create; a create that failed in a way that
    /// may have happened on the server (5xx, 429, reset, timeout) is followed by another
    /// find, never by a blind second create. `create` must make exactly one attempt.
    pub(super) async fn find_or_create<T, F, FF, C, CF>(&self, what: &str, find: F, create: C) -> Result<T, Error>
    where
        F: Fn() -> FF,
        FF: Future<Output = Result<Option<T>, Error>>,
        C: Fn() -> CF,
        CF: Future<Output = Result<T, Error>>,
    {
        let start = Instant::now();
        let deadline = self.session.policy().deadline;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if let Some(found) = find().await? {
                if attempt > 1 {
                    tracing::info!(what, "found what an earlier attempt created");
                }
                return Ok(found);
            }
            match create().await {
                Ok(t) => return Ok(t),
                Err(e) if ambiguous(&e) && start.elapsed() < deadline => {
                    let wait = Duration::from_millis(200u64 << attempt.min(5));
                    tracing::debug!(what, attempt, error = %e, "create failed ambiguously; looking again");
                    tokio::time::sleep(wait).await;
                }
                Err(e) if e.status() == Some(409) => {
                    // Somebody (an earlier try) holds the name/MAC: find it once more.
                    return find().await?.ok_or(e);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One POST attempt (no blind retry), used by creates inside [`find_or_create`](Self::find_or_create).
    pub(super) async fn post_once(&self, s: Service, path: &str, body: Value) -> Result<Reply, Error> {
        self.session.call_once(s, Method::POST, path, Body::Json(body)).await
    }

    /// Poll `probe` (which returns Some(result) when done, or the current state's name)
    /// with backoff until `timeout`.
    pub(super) async fn wait_until<T, P, PF>(&self, what: &str, timeout: Duration, probe: P) -> Result<T, Error>
    where
        P: Fn() -> PF,
        PF: Future<Output = Result<Result<T, String>, Error>>,
    {
        let start = Instant::now();
        let mut delay = Duration::from_millis(250);
        loop {
            match probe().await? {
                Ok(t) => return Ok(t),
                Err(state) => {
                    if start.elapsed() >= timeout {
                        return Err(Error::Timeout {
                            what: what.to_string(),
                            last: state,
                            secs: timeout.as_secs(),
                        });
                    }
                }
            }
            tokio::time::sleep(delay.min(timeout.saturating_sub(start.elapsed()))).await;
            delay = (delay * 3 / 2).min(Duration::from_secs(5));
        }
    }
}

/// May the failed create have happened on the server anyway?
fn ambiguous(e: &Error) -> bool {
    match e {
        Error::Unreachable { .. } => true,
        Error::Api { status, .. } => *status == 429 || *status >= 500,
        _ => false,
    }
}

/// Percent-encode one query value.
pub(super) fn q(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
