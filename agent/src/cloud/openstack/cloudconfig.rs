//! Where the credentials come from, in the three forms operators already use:
//! `clouds.yaml` (+ `secure.yaml`) as the Python tools read it, the `OS_*` environment,
//! and the seed's `dst_cloud` dictionary (which is one clouds.yaml cloud entry).
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::Error;

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How to authenticate to Keystone v3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    Password {
        username: Option<String>,
        user_id: Option<String>,
        password: Secret,
        user_domain_name: Option<String>,
        user_domain_id: Option<String>,
    },
    ApplicationCredential {
        id: Option<String>,
        name: Option<String>,
        secret: Secret,
        /// Needed with `name` (an application credential name is unique per user only).
        username: Option<String>,
        user_id: Option<String>,
        user_domain_name: Option<String>,
        user_domain_id: Option<String>,
    },
}

/// What the token is scoped to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub project_id: Option<String>,
    pub project_name: Option<String>,
    pub project_domain_id: Option<String>,
    pub project_domain_name: Option<String>,
    pub domain_id: Option<String>,
    pub domain_name: Option<String>,
}

/// One cloud, resolved: everything a session needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudConfig {
    /// A name for messages (the clouds.yaml key, "OS_* environment" or "dst_cloud").
    pub name: String,
    pub auth_url: String,
    pub auth: AuthMethod,
    pub scope: Scope,
    pub region_name: Option<String>,
    /// public, internal or admin (the `URL` suffix some configs carry is dropped).
    pub interface: String,
    pub cacert: Option<PathBuf>,
    pub insecure: bool,
}

/// The clouds.yaml search path of the Python tools: `OS_CLIENT_CONFIG_FILE`, then the
/// current folder, `~/.config/openstack`, `/etc/openstack`.
pub fn clouds_yaml_candidates(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(f) = env("OS_CLIENT_CONFIG_FILE").filter(|s| !s.is_empty()) {
        v.push(PathBuf::from(f));
    }
    v.push(PathBuf::from("clouds.yaml"));
    if let Some(home) = env("HOME").filter(|s| !s.is_empty()) {
        v.push(Path::new(&home).join(".config/openstack/clouds.yaml"));
    }
    v.push(PathBuf::from("/etc/openstack/clouds.yaml"));
    v
}

fn process_env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

impl CloudConfig {
    /// The usual resolution of the Python tools: the cloud named by `cloud` (or `OS_CLOUD`)
    /// from clouds.yaml (`clouds_file`, else the search path), else the `OS_*` variables.
    pub fn from_environment(cloud: Option<&str>, clouds_file: Option<&Path>) -> Result<CloudConfig, Error> {
        Self::resolve(cloud, clouds_file, &process_env)
    }

    /// As [`from_environment`](Self::from_environment) with an explicit environment.
    pub fn resolve(
        cloud: Option<&str>,
        clouds_file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<CloudConfig, Error> {
        let cloud = cloud
            .map(str::to_string)
            .or_else(|| env("OS_CLOUD"))
            .filter(|s| !s.is_empty());
        match cloud {
            Some(name) => {
                let files = match clouds_file {
                    Some(f) => vec![f.to_path_buf()],
                    None => clouds_yaml_candidates(env),
                };
                Self::from_clouds_yaml(&name, &files)
            }
            None if env("OS_AUTH_URL").is_some() => Self::from_env(env),
            None => Err(Error::Config(
                "no OpenStack credentials: set [openstack] cloud (or OS_CLOUD) and provide clouds.yaml, \
                 or set the OS_* variables (OS_AUTH_URL, OS_USERNAME, OS_PASSWORD, OS_PROJECT_NAME, …)"
                    .into(),
            )),
        }
    }

    /// The cloud `name` from the first existing file of `files`, merged with the
    /// `secure.yaml` beside it (where the Python tools keep passwords).
    pub fn from_clouds_yaml(name: &str, files: &[PathBuf]) -> Result<CloudConfig, Error> {
        let Some(file) = files.iter().find(|f| f.exists()) else {
            let tried: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            return Err(Error::Config(format!(
                "cloud {name:?}: no clouds.yaml found (tried {}); set OS_CLIENT_CONFIG_FILE or [openstack] clouds_file",
                tried.join(", ")
            )));
        };
        let mut doc = read_yaml(file)?;
        let secure = file.with_file_name("secure.yaml");
        if secure.exists() {
            merge_yaml(&mut doc, read_yaml(&secure)?);
        }
        let entry = doc.get("clouds").and_then(|c| c.get(name)).cloned().ok_or_else(|| {
            let known: Vec<String> = doc
                .get("clouds")
                .and_then(Value::as_mapping)
                .map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            Error::Config(format!(
                "{}: there is no cloud {name:?} (clouds there: {})",
                file.display(),
                known.join(", ")
            ))
        })?;
        Self::from_cloud_entry(&format!("{name} ({})", file.display()), &entry)
    }

    /// The seed's `dst_cloud` dictionary: `{auth: {auth_url, username, password,
    /// project_name, …}, region_name, interface, insecure, cacert, auth_type}`, given as
    /// YAML or JSON text.
    pub fn from_dst_cloud(text: &str) -> Result<CloudConfig, Error> {
        let v: Value = serde_yaml::from_str(text)
            .map_err(|e| Error::Config(format!("dst_cloud is not a YAML/JSON dictionary: {e}")))?;
        Self::from_cloud_entry("dst_cloud", &v)
    }

    /// One cloud entry of clouds.yaml (the same shape as `dst_cloud`).
    pub fn from_cloud_entry(label: &str, entry: &Value) -> Result<CloudConfig, Error> {
        let auth = entry
            .get("auth")
            .ok_or_else(|| Error::Config(format!("{label}: no `auth` section")))?;
        let get = |k: &str| -> Option<String> {
            auth.get(k)
                .or_else(|| entry.get(k))
                .and_then(scalar)
                .filter(|s| !s.is_empty())
        };
        let top = |k: &str| entry.get(k).and_then(scalar).filter(|s| !s.is_empty());
        let auth_type = top("auth_type").unwrap_or_else(|| {
            if get("application_credential_secret").is_some() {
                "v3applicationcredential".into()
            } else {
                "password".into()
            }
        });
        let flat: BTreeMap<&str, Option<String>> = [
            "auth_url",
            "username",
            "user_id",
            "password",
            "user_domain_name",
            "user_domain_id",
            "project_name",
            "project_id",
            "tenant_name",
            "tenant_id",
            "project_domain_name",
            "project_domain_id",
            "domain_name",
            "domain_id",
            "application_credential_id",
            "application_credential_name",
            "application_credential_secret",
        ]
        .into_iter()
        .map(|k| (k, get(k)))
        .collect();
        let f = |k: &str| flat.get(k).cloned().flatten();
        let cfg = Inputs {
            label: label.to_string(),
            auth_type,
            values: Box::new(f),
            region_name: top("region_name"),
            interface: top("interface").or_else(|| top("endpoint_type")),
            cacert: top("cacert"),
            insecure: entry
                .get("insecure")
                .and_then(truthy)
                .or_else(|| entry.get("verify").and_then(truthy).map(|v| !v)),
        };
        cfg.build()
    }

    /// The `OS_*` variables of the Python tools.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<CloudConfig, Error> {
        let e = |k: &str| env(k).filter(|s| !s.is_empty());
        let values = move |k: &str| -> Option<String> {
            match k {
                "project_name" => e("OS_PROJECT_NAME").or_else(|| e("OS_TENANT_NAME")),
                "project_id" => e("OS_PROJECT_ID").or_else(|| e("OS_TENANT_ID")),
                k => e(&format!("OS_{}", k.to_ascii_uppercase())),
            }
        };
        let auth_type = values("auth_type").unwrap_or_else(|| {
            if values("application_credential_secret").is_some() {
                "v3applicationcredential".into()
            } else {
                "password".into()
            }
        });
        Inputs {
            label: "OS_* environment".into(),
            auth_type,
            region_name: values("region_name"),
            interface: values("interface").or_else(|| values("endpoint_type")),
            cacert: values("cacert"),
            insecure: values("insecure").map(|s| matches!(s.to_ascii_lowercase().as_str(), "1" | "true" | "yes")),
            values: Box::new(values),
        }
        .build()
    }
}

type Lookup<'a> = Box<dyn Fn(&str) -> Option<String> + 'a>;

struct Inputs<'a> {
    label: String,
    auth_type: String,
    values: Lookup<'a>,
    region_name: Option<String>,
    interface: Option<String>,
    cacert: Option<String>,
    insecure: Option<bool>,
}

impl Inputs<'_> {
    fn build(self) -> Result<CloudConfig, Error> {
        let v = &self.values;
        let label = &self.label;
        let missing = |what: &str| Error::Config(format!("{label}: {what} is missing"));
        let auth_url = v("auth_url").ok_or_else(|| missing("auth_url"))?;
        let auth = match self.auth_type.as_str() {
            "password" | "v3password" => AuthMethod::Password {
                username: v("username"),
                user_id: v("user_id"),
                password: Secret::new(v("password").ok_or_else(|| missing("password"))?),
                user_domain_name: v("user_domain_name"),
                user_domain_id: v("user_domain_id"),
            },
            "v3applicationcredential" | "applicationcredential" => AuthMethod::ApplicationCredential {
                id: v("application_credential_id"),
                name: v("application_credential_name"),
                secret: Secret::new(
                    v("application_credential_secret").ok_or_else(|| missing("application_credential_secret"))?,
                ),
                username: v("username"),
                user_id: v("user_id"),
                user_domain_name: v("user_domain_name"),
                user_domain_id: v("user_domain_id"),
            },
            other => {
                return Err(Error::Config(format!(
                    "{label}: auth_type {other:?} is not supported (use password or v3applicationcredential)"
                )))
            }
        };
        if let AuthMethod::Password {
            username: None,
            user_id: None,
            ..
        } = &auth
        {
            return Err(missing("username (or user_id)"));
        }
        if let AuthMethod::ApplicationCredential {
            id: None,
            name,
            username,
            user_id,
            ..
        } = &auth
        {
            if name.is_none() || (username.is_none() && user_id.is_none()) {
                return Err(missing("application_credential_id (or its name with the username)"));
            }
        }
        let scope = if matches!(auth, AuthMethod::ApplicationCredential { .. }) {
            // An application credential carries its own project scope.
            Scope::default()
        } else {
            Scope {
                project_id: v("project_id").or_else(|| v("tenant_id")),
                project_name: v("project_name").or_else(|| v("tenant_name")),
                project_domain_id: v("project_domain_id"),
                project_domain_name: v("project_domain_name"),
                domain_id: v("domain_id"),
                domain_name: v("domain_name"),
            }
        };
        let interface = self
            .interface
            .map(|i| i.trim_end_matches("URL").to_ascii_lowercase())
            .unwrap_or_else(|| "public".into());
        if !matches!(interface.as_str(), "public" | "internal" | "admin") {
            return Err(Error::Config(format!(
                "{label}: interface {interface:?} must be public, internal or admin"
            )));
        }
        Ok(CloudConfig {
            name: self.label.clone(),
            auth_url: normalize_auth_url(&auth_url),
            auth,
            scope,
            region_name: self.region_name,
            interface,
            cacert: self.cacert.map(PathBuf::from),
            insecure: self.insecure.unwrap_or(false),
        })
    }
}

/// `https://k:5000` and `https://k:5000/v3/` both mean `https://k:5000/v3`.
fn normalize_auth_url(u: &str) -> String {
    let u = u.trim_end_matches('/');
    if u.ends_with("/v3") {
        u.to_string()
    } else {
        format!("{u}/v3")
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn truthy(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => Some(matches!(s.to_ascii_lowercase().as_str(), "1" | "true" | "yes")),
        _ => None,
    }
}

fn read_yaml(p: &Path) -> Result<Value, Error> {
    let text = std::fs::read_to_string(p).map_err(|e| Error::Config(format!("cannot read {}: {e}", p.display())))?;
    serde_yaml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", p.display())))
}

/// secure.yaml's keys win, deeply.
fn merge_yaml(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge_yaml(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dst_cloud_dictionary_of_the_seed() {
        let c = CloudConfig::from_dst_cloud(
            "auth:\n  auth_url: https://k.example:13000\n  username: tenant\n  project_id: xyz\n  project_name: migration\n  user_domain_name: osm.com\n  password: pw\nregion_name: regionOne\ninterface: public\ninsecure: true\nidentity_api_version: 3\n",
        )
        .unwrap();
        assert_eq!(c.auth_url, "https://k.example:13000/v3");
        assert_eq!(c.scope.project_id.as_deref(), Some("xyz"));
        assert_eq!(c.region_name.as_deref(), Some("regionOne"));
        assert!(c.insecure);
        assert!(!format!("{c:?}").contains("pw\""), "{c:?}");
        let j = CloudConfig::from_dst_cloud(r#"{"auth": {"auth_url": "http://k/v3/", "username": "a", "password": "b", "project_name": "p"}, "interface": "internalURL"}"#).unwrap();
        assert_eq!(j.auth_url, "http://k/v3");
        assert_eq!(j.interface, "internal");
    }

    #[test]
    fn env_and_missing_keys() {
        let env: BTreeMap<&str, &str> = [
            ("OS_AUTH_URL", "http://k:5000/v3"),
            ("OS_APPLICATION_CREDENTIAL_ID", "id1"),
            ("OS_APPLICATION_CREDENTIAL_SECRET", "s"),
            ("OS_AUTH_TYPE", "v3applicationcredential"),
        ]
        .into();
        let c = CloudConfig::resolve(None, None, &|k| env.get(k).map(|s| s.to_string())).unwrap();
        assert!(matches!(c.auth, AuthMethod::ApplicationCredential { id: Some(ref i), .. } if i == "id1"));
        let err = CloudConfig::from_env(&|k| (k == "OS_AUTH_URL").then(|| "http://k".to_string())).unwrap_err();
        assert!(err.to_string().contains("password is missing"), "{err}");
        let err = CloudConfig::resolve(None, None, &|_| None).unwrap_err();
        assert!(err.to_string().contains("OS_CLOUD"), "{err}");
    }

    #[test]
    fn clouds_yaml_with_secure_yaml() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("clouds.yaml"),
            "clouds:\n  c1:\n    auth:\n      auth_url: http://k:5000\n      username: u\n      project_name: p\n    region_name: R\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("secure.yaml"),
            "clouds:\n  c1:\n    auth:\n      password: sec\n",
        )
        .unwrap();
        let c = CloudConfig::from_clouds_yaml("c1", &[d.path().join("clouds.yaml")]).unwrap();
        assert!(matches!(c.auth, AuthMethod::Password { ref password, .. } if password.expose() == "sec"));
        let err = CloudConfig::from_clouds_yaml("nope", &[d.path().join("clouds.yaml")]).unwrap_err();
        assert!(err.to_string().contains("c1"), "{err}");
    }
}
