//! Every list call goes through here and reads ALL pages, so a project with thousands of
//! volumes or ports is seen whole (a single `limit=1000` request silently stops there).
//!
//! - Cinder, Nova, Neutron: `limit` + `marker`; a page that may not be the last carries
//!   `<collection>_links` with a `rel: next` href (Neutron without pagination ignores
//!   `limit` and answers everything, without links).
//! - Glance v2: the same, with a top-level `next` href.
//! - Nova's volume attachments: `limit` + `offset`, no links ([`Client::list_all_by_offset`]).
//!
//! Of a next link only the query is used (it holds the filters and the new marker); it is
//! sent to the catalog endpoint again: the link's scheme, host and path prefix are the
//! service's own view (`*_link_prefix`, a proxy in front) and need not be reachable.
use std::collections::HashSet;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::client::Client;
use super::session::Service;
use super::Error;

/// Items asked for per page unless a test lowers it ([`Client::with_page_size`]); services
/// cap it (Nova/Cinder/Glance at 1000 by default) and the next link covers the rest.
pub const DEFAULT_PAGE_SIZE: usize = 1000;

impl Client {
    /// Every item under `key` of `path` (which may carry a query), page after page.
    pub(super) async fn list_all<T: DeserializeOwned>(
        &self,
        s: Service,
        path: &str,
        key: &str,
    ) -> Result<Vec<T>, Error> {
        let (base, query) = split(path);
        let mut query = with_param(query, "limit", &self.page_size.to_string());
        let mut seen = HashSet::from([query.clone()]);
        let mut all = Vec::new();
        loop {
            let page = format!("{base}?{query}");
            let body: Value = self.get_json(s, &page).await?;
            let items = items::<T>(s, &page, &body, key)?;
            let got = items.len();
            all.extend(items);
            let Some(next) = next_query(&body, key) else {
                return Ok(all);
            };
            if got == 0 {
                return Ok(all); // a next link after an empty page leads nowhere new
            }
            let next = with_param(&next, "limit", &self.page_size.to_string());
            if !seen.insert(next.clone()) {
                return Err(Error::Decode {
                    service: s.name(),
                    url: base.to_string(),
                    message: format!("the next link of {key} repeats a page ({next}); the service's paging is broken"),
                });
            }
            query = next;
        }
    }

    /// Every item under `key` of `path`, paged with `limit` + `offset` until an empty page
    /// (a short page may only be the service's own cap).
    pub(super) async fn list_all_by_offset<T: DeserializeOwned>(
        &self,
        s: Service,
        path: &str,
        key: &str,
    ) -> Result<Vec<T>, Error> {
        let (base, query) = split(path);
        let query = with_param(query, "limit", &self.page_size.to_string());
        let mut all = Vec::new();
        loop {
            let page = format!("{base}?{}", with_param(&query, "offset", &all.len().to_string()));
            let body: Value = self.get_json(s, &page).await?;
            let items = items::<T>(s, &page, &body, key)?;
            if items.is_empty() {
                return Ok(all);
            }
            all.extend(items);
        }
    }
}

fn split(path: &str) -> (&str, &str) {
    path.split_once('?').unwrap_or((path, ""))
}

/// `query` with `key` set to `value` (replaced where present, else appended).
fn with_param(query: &str, key: &str, value: &str) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    let mut set = false;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if k == key {
            if !set {
                out.append_pair(key, value);
                set = true;
            }
        } else {
            out.append_pair(&k, &v);
        }
    }
    if !set {
        out.append_pair(key, value);
    }
    out.finish()
}

fn items<T: DeserializeOwned>(s: Service, url: &str, body: &Value, key: &str) -> Result<Vec<T>, Error> {
    let decode = |message: String| Error::Decode {
        service: s.name(),
        url: url.split('?').next().unwrap_or(url).to_string(),
        message,
    };
    let list = body
        .get(key)
        .ok_or_else(|| decode(format!("no {key:?} in the list reply")))?;
    serde_json::from_value(list.clone()).map_err(|e| decode(format!("{key}: {e}")))
}

/// The query of the page after this one, if the reply links one.
fn next_query(body: &Value, key: &str) -> Option<String> {
    let href = body
        .get(format!("{key}_links"))
        .and_then(Value::as_array)
        .and_then(|links| {
            links
                .iter()
                .find(|l| l.get("rel").and_then(Value::as_str) == Some("next"))
        })
        .and_then(|l| l.get("href"))
        .or_else(|| body.get("next")) // Glance
        .and_then(Value::as_str)?;
    let query = href.split_once('?')?.1;
    Some(query.split('#').next().unwrap_or(query).to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_limit_is_set_once_and_filters_are_kept() {
        assert_eq!(with_param("", "limit", "2"), "limit=2");
        assert_eq!(with_param("name=a+b&limit=1000", "limit", "2"), "name=a+b&limit=2");
        assert_eq!(with_param("limit=1&limit=3&x=%5E", "limit", "2"), "limit=2&x=%5E");
    }

    #[test]
    fn next_links_of_each_service() {
        // Nova/Cinder/Neutron: <key>_links with rel next (Neutron also has previous).
        let neutron = json!({ "ports": [], "ports_links": [
            { "rel": "previous", "href": "http://h:9696/v2.0/ports?limit=2&marker=a&page_reverse=True" },
            { "rel": "next", "href": "http://h:9696/v2.0/ports?limit=2&marker=b&tags=osm" },
        ]});
        assert_eq!(
            next_query(&neutron, "ports").as_deref(),
            Some("limit=2&marker=b&tags=osm")
        );
        // Glance: a relative `next`.
        let glance = json!({ "images": [], "next": "/v2/images?name=x&limit=2&marker=c" });
        assert_eq!(
            next_query(&glance, "images").as_deref(),
            Some("name=x&limit=2&marker=c")
        );
        // The last page: no link.
        assert_eq!(next_query(&json!({ "volumes": [] }), "volumes"), None);
        let only_previous =
            json!({ "networks": [], "networks_links": [{ "rel": "previous", "href": "http://h/x?marker=a" }] });
        assert_eq!(next_query(&only_previous, "networks"), None);
    }
}
