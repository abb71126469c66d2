//! The vim25 session: one HTTPS client, the service content, the session cookie, and
//! calls that log in again transparently when the session expired (NotAuthenticated).
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::error::{Error, Result};
use super::soap::{self, Call, ObjectContent};
use super::tls::{self, Seen, Trust};
use super::types::*;

/// Where vCenter is and how to log in and trust it.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// `https://vcenter.example.com/sdk`
    pub url: url::Url,
    pub user: String,
    /// The password's file (first line); read at each login, never logged.
    pub password_file: PathBuf,
    pub trust: Trust,
    /// One HTTP exchange's limit.
    pub timeout: Duration,
}

#[derive(Default)]
struct Session {
    cookie: Option<String>,
    key: String,
}

pub struct Client {
    http: reqwest::Client,
    ep: Endpoint,
    seen: Seen,
    pub sc: ServiceContent,
    session: Mutex<Session>,
    round_trips: AtomicU64,
}

const SOAP_ACTION: &str = "urn:vim25/6.5";
/// Page size of PropertyCollector reads.
pub const PAGE: u32 = 500;

impl Client {
    /// Connect, read the service content, and log in.
    pub async fn connect(ep: Endpoint) -> Result<Client> {
        if ep.trust == Trust::Insecure {
            tracing::warn!(
                "vsphere.insecure = true: vCenter's certificate at {} is NOT verified; anyone on the path can read the password. Set vsphere.ca_file or vsphere.thumbprint",
                ep.url
            );
        }
        let (cfg, seen) = tls::client_config(&ep.trust).map_err(Error::Config)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(cfg)
            .connect_timeout(ep.timeout.min(Duration::from_secs(15)))
            .timeout(ep.timeout)
            .user_agent(concat!("osm-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        let mut c = Client {
            http,
            ep,
            seen,
            sc: ServiceContent::default(),
            session: Mutex::new(Session::default()),
            round_trips: AtomicU64::new(0),
        };
        let si = MoRef::new("ServiceInstance", "ServiceInstance");
        let xml = c.post(&Call::RetrieveServiceContent(This { this: &si }), None).await?;
        c.sc = soap::decode_one("RetrieveServiceContent", &xml)?;
        c.login().await?;
        Ok(c)
    }

    /// SHA-1 thumbprint of the certificate vCenter presented (verified unless insecure).
    pub fn thumbprint_sha1(&self) -> Option<String> {
        self.seen.sha1()
    }

    /// What tells this vCenter from any other: its instance UUID, else (a standalone ESXi
    /// host has none) its address.
    pub fn vcenter_id(&self) -> String {
        match self.sc.about.instance_uuid.trim() {
            "" => self.ep.url.host_str().unwrap_or_default().to_string(),
            u => u.to_string(),
        }
    }

    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    pub async fn session_key(&self) -> String {
        self.session.lock().await.key.clone()
    }

    fn read_password(&self) -> Result<String> {
        let p = &self.ep.password_file;
        let text = std::fs::read_to_string(p).map_err(|source| Error::PasswordFile {
            path: p.display().to_string(),
            source,
        })?;
        Ok(text.lines().next().unwrap_or_default().to_string())
    }

    pub async fn login(&self) -> Result<()> {
        let password = self.read_password()?;
        let sm = self.sc.session_manager.clone();
        let mut s = self.session.lock().await;
        s.cookie = None;
        let call = Call::Login(Login {
            this: &sm,
            user_name: &self.ep.user,
            password: &password,
        });
        let (xml, cookie) = self.exchange(&call, None).await?;
        let us: UserSession = soap::decode_one("Login", &xml)?;
        s.cookie = cookie;
        s.key = us.key;
        tracing::debug!(user = %self.ep.user, "logged in to vCenter {}", self.ep.url);
        Ok(())
    }

    /// Log out; errors are ignored (the session times out on its own).
    pub async fn logout(&self) {
        let sm = self.sc.session_manager.clone();
        let cookie = self.session.lock().await.cookie.clone();
        let _ = self.post(&Call::Logout(This { this: &sm }), cookie.as_deref()).await;
    }

    pub async fn session_is_active(&self) -> Result<bool> {
        let key = self.session_key().await;
        let sm = self.sc.session_manager.clone();
        let xml = self
            .call(&Call::SessionIsActive(SessionIsActive {
                this: &sm,
                session_id: &key,
                user_name: &self.ep.user,
            }))
            .await?;
        Ok(soap::decode_one::<Text>("SessionIsActive", &xml)?.text.trim() == "true")
    }

    /// One call in the session; a NotAuthenticated fault triggers one new login and a retry.
    pub async fn call(&self, call: &Call<'_>) -> Result<String> {
        let cookie = self.session.lock().await.cookie.clone();
        match self.post(call, cookie.as_deref()).await {
            Err(Error::NotAuthenticated(_)) => {
                tracing::info!("vCenter session expired; logging in again");
                self.login().await.map_err(|e| match e {
                    Error::InvalidLogin { .. } => e,
                    other => Error::NotAuthenticated(other.to_string()),
                })?;
                let cookie = self.session.lock().await.cookie.clone();
                self.post(call, cookie.as_deref()).await
            }
            r => r,
        }
    }

    async fn post(&self, call: &Call<'_>, cookie: Option<&str>) -> Result<String> {
        self.exchange(call, cookie).await.map(|(x, _)| x)
    }

    /// One HTTP round trip: the reply's body and its session cookie, or the fault.
    async fn exchange(&self, call: &Call<'_>, cookie: Option<&str>) -> Result<(String, Option<String>)> {
        let body = soap::encode(call)?;
        let mut req = self
            .http
            .post(self.ep.url.clone())
            .header("Content-Type", "text/xml; charset=utf-8")
            .header("SOAPAction", SOAP_ACTION)
            .body(body);
        if let Some(c) = cookie {
            req = req.header("Cookie", c);
        }
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        let cookie = resp
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("vmware_soap_session"))
            .and_then(|v| v.split(';').next())
            .map(str::to_string);
        let text = resp.text().await.map_err(|e| self.transport(e))?;
        if let Some(f) = soap::decode_fault(&text) {
            return Err(Error::from_fault(f, &self.ep.user));
        }
        if !status.is_success() {
            let head: String = text.chars().take(200).collect();
            return Err(Error::protocol(
                call.name(),
                format!("HTTP {status} from {}: {head}", self.ep.url),
            ));
        }
        Ok((text, cookie))
    }

    fn transport(&self, e: reqwest::Error) -> Error {
        let url = self.ep.url.to_string();
        // A certificate problem is reported by rustls somewhere down the source chain.
        let mut src: Option<&dyn std::error::Error> = Some(&e);
        while let Some(s) = src {
            if let Some(t) = s.downcast_ref::<rustls::Error>() {
                return Error::Tls {
                    url,
                    reason: t.to_string(),
                };
            }
            let text = s.to_string();
            if text.contains("invalid peer certificate") || text.contains("UnknownIssuer") {
                return Error::Tls { url, reason: text };
            }
            src = s.source();
        }
        if e.is_timeout() {
            return Error::Timeout {
                what: format!("vCenter at {url} to answer"),
                after: self.ep.timeout,
            };
        }
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            reason = format!("{reason}: {s}");
            src = s.source();
        }
        Error::Unreachable { url, reason }
    }

    /// RetrievePropertiesEx then ContinueRetrievePropertiesEx until no token is left.
    pub async fn retrieve(&self, spec: PropertyFilterSpec, page: u32) -> Result<Vec<ObjectContent>> {
        let pc = self.sc.property_collector.clone();
        let xml = self
            .call(&Call::RetrievePropertiesEx(RetrievePropertiesEx {
                this: &pc,
                spec_set: vec![spec],
                options: RetrieveOptions { max_objects: page },
            }))
            .await?;
        let mut r = soap::decode_retrieve(&xml)?;
        let mut all = std::mem::take(&mut r.objects);
        while let Some(token) = r.token.take() {
            let xml = self
                .call(&Call::ContinueRetrievePropertiesEx(ContinueRetrievePropertiesEx {
                    this: &pc,
                    token: &token,
                }))
                .await?;
            r = soap::decode_retrieve(&xml)?;
            all.append(&mut r.objects);
        }
        Ok(all)
    }

    /// Properties of one object.
    pub async fn properties(&self, obj: &MoRef, paths: &[&str]) -> Result<ObjectContent> {
        let spec = PropertyFilterSpec {
            prop_set: vec![PropertySpec {
                kind: obj.kind.clone(),
                path_set: paths.iter().map(|p| p.to_string()).collect(),
            }],
            object_set: vec![ObjectSpec {
                obj: obj.clone(),
                skip: false,
                select_set: vec![],
            }],
        };
        let mut v = self.retrieve(spec, 1).await?;
        if v.is_empty() {
            return Err(Error::ManagedObjectNotFound {
                object: obj.to_string(),
            });
        }
        Ok(v.swap_remove(0))
    }

    /// Objects of `types` under `container` (recursively) with the given paths per type,
    /// through a ContainerView that is destroyed afterwards.
    pub async fn view(&self, container: &MoRef, specs: &[(&str, &[&str])]) -> Result<Vec<ObjectContent>> {
        let vm = self.sc.view_manager.clone();
        let types: Vec<&str> = specs.iter().map(|(t, _)| *t).collect();
        let xml = self
            .call(&Call::CreateContainerView(CreateContainerView {
                this: &vm,
                container,
                types,
                recursive: true,
            }))
            .await?;
        let view: MoRef = soap::decode_one("CreateContainerView", &xml)?;
        let spec = PropertyFilterSpec {
            prop_set: specs
                .iter()
                .map(|(t, paths)| PropertySpec {
                    kind: t.to_string(),
                    path_set: paths.iter().map(|p| p.to_string()).collect(),
                })
                .collect(),
            object_set: vec![ObjectSpec {
                obj: view.clone(),
                skip: true,
                select_set: vec![TraversalSpec {
                    xsi_type: "TraversalSpec",
                    kind: "ContainerView".into(),
                    path: "view".into(),
                    skip: false,
                }],
            }],
        };
        let r = self.retrieve(spec, PAGE).await;
        let _ = self.call(&Call::DestroyView(This { this: &view })).await;
        r
    }

    /// Wait for a task to end (polling its `info` with backoff); its result on success,
    /// its error's message (typed when it is a known fault) on failure.
    pub async fn wait_task(&self, task: &MoRef, what: &str, timeout: Duration) -> Result<Option<MoRef>> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            let oc = self.properties(task, &["info"]).await?;
            let info: TaskInfo = oc.get("info")?.unwrap_or_default();
            match info.state.as_str() {
                "success" => return Ok(info.result),
                "error" => {
                    let e = info.error.unwrap_or_default();
                    let f = soap::fault_of(e.fault, e.localized_message.clone());
                    return Err(match Error::from_fault(f, &self.ep.user) {
                        Error::Fault(f) => Error::TaskFailed {
                            task: task.value.clone(),
                            what: what.into(),
                            message: if f.message.is_empty() { f.kind } else { f.message },
                        },
                        typed => typed,
                    });
                }
                _ => {}
            }
            if start.elapsed() >= timeout {
                return Err(Error::Timeout {
                    what: format!("task {} ({what})", task.value),
                    after: timeout,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}
