//! The web page for people: one HTML page with its script, style sheet and icon, embedded in the
//! binary from `crates/cyncd/web/` (no CDN, no build step, works without internet).
//!
//! The page reads `GET /api/events` ([`super::live`]) for live state and uses the JSON API for
//! everything else. Files are served with their content type, an `ETag` (a hash of the bytes)
//! and `Cache-Control: no-cache`: browsers revalidate each load (a 304 when unchanged), so a new
//! binary's page is never mixed with an old cached script. A strict Content-Security-Policy
//! keeps the page to its own origin.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::hash::{Hash, Hasher};

/// One embedded file.
#[derive(Debug, Clone, Copy)]
struct Asset {
    path: &'static str,
    body: &'static [u8],
    content_type: &'static str,
}

const ASSETS: [Asset; 4] = [
    Asset {
        path: "/",
        body: include_bytes!("../../web/index.html"),
        content_type: "text/html; charset=utf-8",
    },
    Asset {
        path: "/app.js",
        body: include_bytes!("../../web/app.js"),
        content_type: "text/javascript; charset=utf-8",
    },
    Asset {
        path: "/style.css",
        body: include_bytes!("../../web/style.css"),
        content_type: "text/css; charset=utf-8",
    },
    Asset {
        path: "/favicon.svg",
        body: include_bytes!("../../web/favicon.svg"),
        content_type: "image/svg+xml",
    },
];

/// Only this origin's script, styles and connections; framed only by this origin (Home
/// Assistant's ingress shows the page in a frame of its own origin, through which the page is
/// served).
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'";

/// The routes: `GET /` and the page's files.
pub fn routes() -> axum::Router {
    ASSETS.iter().fold(axum::Router::new(), |router, asset| {
        let asset = *asset;
        let etag = etag(asset.body);
        router.route(
            asset.path,
            get(move |headers: HeaderMap| async move { serve(asset, &etag, &headers) }),
        )
    })
}

fn serve(asset: Asset, etag: &str, request: &HeaderMap) -> Response {
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, v);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.path == "/" {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

/// A strong validator: SipHash of the bytes (fixed keys, so stable for a given binary).
fn etag(body: &[u8]) -> String {
    let mut h = std::hash::DefaultHasher::new();
    body.hash(&mut h);
    format!("\"{:016x}\"", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_links_only_embedded_files() {
        let page = std::str::from_utf8(ASSETS[0].body).unwrap();
        // Relative links, so the page also works under a path prefix (Home Assistant's
        // ingress serves it at /api/hassio_ingress/<token>/).
        for link in ["app.js", "style.css", "favicon.svg"] {
            assert!(page.contains(&format!("\"{link}\"")), "{link}");
            assert!(ASSETS.iter().any(|a| a.path == format!("/{link}")));
        }
        for asset in ASSETS.iter().filter(|a| !a.path.ends_with(".svg")) {
            let text = String::from_utf8_lossy(asset.body);
            for absolute in ["\"/", "'/", "`/"] {
                assert!(
                    !text.contains(absolute),
                    "{} has an absolute path ({absolute})",
                    asset.path
                );
            }
        }
        // Nothing from elsewhere: no CDN, no absolute URL.
        for asset in &ASSETS {
            let text =
                String::from_utf8_lossy(asset.body).replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://"), "{}", asset.path);
            assert!(!text.contains("https://"), "{}", asset.path);
        }
    }

    #[test]
    fn etags_differ_by_content() {
        assert_ne!(etag(b"a"), etag(b"b"));
        assert_eq!(etag(b"a"), etag(b"a"));
        assert!(etag(b"a").starts_with('"'));
    }
}
