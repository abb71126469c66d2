//! One error enum for the OpenStack boundary; every message is one line that names what
//! failed, carries the service's own message and says what to do where we can tell.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Credentials or settings are missing or malformed.
    #[error("OpenStack configuration: {0}")]
    Config(String),
    /// Keystone refused the credentials.
    #[error("Keystone at {auth_url} refused the credentials of cloud {cloud}: {message} (HTTP {status}); check the password or application credential")]
    AuthRejected {
        cloud: String,
        auth_url: String,
        status: u16,
        message: String,
    },
    /// A service could not be reached (connection refused, reset, TLS, timeout) until the
    /// call's deadline.
    #[error("cannot reach {service} at {url}: {cause} ({attempts} attempts in {secs}s); check that the endpoint is up and reachable from this host")]
    Unreachable {
        service: &'static str,
        url: String,
        cause: String,
        attempts: u32,
        secs: u64,
    },
    /// A service answered with an error we do not retry, or kept failing with 5xx/429
    /// until the deadline.
    #[error("{service} {method} {url}: HTTP {status}: {message}")]
    Api {
        service: &'static str,
        method: String,
        url: String,
        status: u16,
        message: String,
    },
    /// The catalog has no endpoint for a service at the chosen interface and region.
    #[error("the catalog of cloud {cloud} has no {service} endpoint for interface {interface}{region}; check region_name and interface")]
    NoEndpoint {
        cloud: String,
        service: &'static str,
        interface: String,
        region: String,
    },
    /// A resource did not reach the wanted state.
    #[error("{what}: {message}")]
    State { what: String, message: String },
    /// Waited too long.
    #[error("{what}: still {last} after {secs}s")]
    Timeout { what: String, last: String, secs: u64 },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("unexpected reply from {service} {url}: {message}")]
    Decode {
        service: &'static str,
        url: String,
        message: String,
    },
}

impl Error {
    /// HTTP status of an API error, if this is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_)) || self.status() == Some(404)
    }
}

/// The message an OpenStack service put in its error body: Nova/Cinder
/// `{"badRequest": {"message": …}}`, Neutron `{"NeutronError": {"message": …}}`, Keystone
/// `{"error": {"message": …}}`, Glance/webob HTML or text.
pub fn service_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(m) = find_message(&v, 0) {
            return one_line(&m);
        }
    }
    let text = String::from_utf8_lossy(body);
    // Strip HTML tags of webob's error pages.
    let mut out = String::new();
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let s = one_line(&out);
    if s.is_empty() {
        "(empty body)".into()
    } else {
        s
    }
}

fn find_message(v: &serde_json::Value, depth: u32) -> Option<String> {
    let obj = v.as_object()?;
    for key in ["message", "faultstring", "detail"] {
        if let Some(m) = obj.get(key).and_then(|m| m.as_str()) {
            if !m.is_empty() {
                return Some(m.to_string());
            }
        }
    }
    if depth < 2 {
        for val in obj.values() {
            if let Some(m) = find_message(val, depth + 1) {
                return Some(m);
            }
        }
    }
    None
}

fn one_line(s: &str) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.len() > 400 {
        let mut end = 400;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_each_service() {
        assert_eq!(
            service_message(br#"{"badRequest": {"message": "Invalid volume: bad", "code": 400}}"#),
            "Invalid volume: bad"
        );
        assert_eq!(
            service_message(br#"{"NeutronError": {"type": "MacAddressInUse", "message": "Unable to complete operation for network x. The mac address y is in use.", "detail": ""}}"#),
            "Unable to complete operation for network x. The mac address y is in use."
        );
        assert_eq!(
            service_message(br#"{"error":{"code":401,"message":"The request you have made requires authentication.","title":"Unauthorized"}}"#),
            "The request you have made requires authentication."
        );
        assert_eq!(
            service_message(b"<html><body><h1>404 Not Found</h1>\n The resource could not be found.</body></html>"),
            "404 Not Found The resource could not be found."
        );
    }
}
