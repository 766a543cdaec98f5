//! The operator console at `/console`: a static page (HTML, CSS and
//! JavaScript modules in `admin/console/`, compiled into the binary) that
//! signs in with an admin token or API key and drives the `/v1` API from
//! the browser. The server side only serves the files; every figure, table
//! and action of the page is a call to the documented API.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::{ApiError, ErrorBody, Path};

/// One file of the console.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// The page itself, served at `/console/`.
const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("../console/index.html"),
};

/// Everything the page loads, served at `/console/{asset}`.
const ASSETS: [Asset; 8] = [
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../console/console.css"),
    },
    script("console.js", include_str!("../console/console.js")),
    script("api.js", include_str!("../console/api.js")),
    script("format.js", include_str!("../console/format.js")),
    script("msgpack.js", include_str!("../console/msgpack.js")),
    script("chart.js", include_str!("../console/chart.js")),
    script("overview.js", include_str!("../console/overview.js")),
    script("tables.js", include_str!("../console/tables.js")),
];

const fn script(name: &'static str, body: &'static str) -> Asset {
    Asset {
        name,
        content_type: "text/javascript; charset=utf-8",
        body,
    }
}

/// What the page may load and where it may send requests: only its own
/// origin. The browser then refuses anything from a CDN even if a file
/// asked for it, inline scripts cannot run, and no form can submit (the
/// credential must never end up in a URL).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// Operator console (redirect).
///
/// Redirects to `/console/`, the operator console.
#[utoipa::path(
    get, path = "/console", tag = "meta",
    responses((status = 303, description = "Redirect to `/console/`"))
)]
pub(crate) async fn console_redirect() -> Redirect {
    // Relative, so that it also works behind a path prefix.
    Redirect::to("console/")
}

/// Operator console.
///
/// A web page to watch and act on the broker: live charts of `/v1/stats`,
/// topics and their history, publishing, connections. Sign in with an admin
/// token or API key. Works offline: every file is served from the binary.
#[utoipa::path(
    get, path = "/console/", tag = "meta",
    responses((status = 200, description = "The console page", content_type = "text/html", body = String))
)]
pub(crate) async fn console_index() -> Response {
    serve(&INDEX)
}

/// Path of a console file.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct AssetPath {
    /// A file of the console, like `console.js`.
    asset: String,
}

/// Operator console file.
///
/// A script or style sheet of the console page.
#[utoipa::path(
    get, path = "/console/{asset}", tag = "meta",
    params(AssetPath),
    responses(
        (status = 200, description = "The file"),
        (status = 404, description = "No such file (`not_found`)", body = ErrorBody),
    )
)]
pub(crate) async fn console_asset(Path(path): Path<AssetPath>) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|asset| asset.name == path.asset)
        .map(serve)
        .ok_or_else(|| ApiError::NotFound {
            code: "not_found",
            message: format!("no console file `{}`", path.asset),
        })
}

fn serve(asset: &Asset) -> Response {
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, asset.content_type)],
        asset.body,
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The files change with the binary; a browser must not keep an old
    // script next to a new page.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every module the scripts import is served, and nothing the page
    /// loads points off the listener.
    #[test]
    fn every_imported_module_is_served() {
        let names: Vec<&str> = ASSETS.iter().map(|asset| asset.name).collect();
        for asset in ASSETS.iter().chain([&INDEX]) {
            for line in asset.body.lines() {
                let line = line.trim();
                // The SVG namespace is a name, never fetched.
                let other_sites = line.replace("\"http://www.w3.org/2000/svg\"", "");
                assert!(
                    !other_sites.contains("http://") && !other_sites.contains("https://"),
                    "{} refers to another site: {line}",
                    asset.name
                );
                if let Some((_, module)) = line
                    .strip_prefix("import ")
                    .and_then(|line| line.split_once("from \"./"))
                {
                    let module = module.trim_end_matches("\";");
                    assert!(names.contains(&module), "{} imports {module}", asset.name);
                }
            }
        }
    }
}
