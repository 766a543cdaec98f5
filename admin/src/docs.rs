//! The API's own description: the OpenAPI document at `/openapi.json` and
//! the Swagger UI at `/docs`, served from files compiled into the binary
//! (no CDN, nothing fetched at build or run time).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, PathItem, Ref, ResponseBuilder};

use crate::AppState;
use crate::error::{ApiError, ErrorBody, Path};

/// The name of the security scheme in the document.
const SECURITY_SCHEME: &str = "bearer";

/// The description at the top of the document and of the UI.
const DESCRIPTION: &str = "\
Administration of a Sockeye broker: topics and their stored history, \
publishing over HTTP, WebSocket connections, statistics and Prometheus metrics.

Every route under `/v1` and `/metrics` needs `Authorization: Bearer <credential>`, \
where the credential is an admin token signed by the broker's key \
(`sockeye token --sub NAME --admin`) or one of the configured `admin.api_keys`. \
Missing or invalid credentials get 401, a valid token without the `admin` claim 403. \
Every error has the JSON body `{\"code\", \"message\"}`.

Lists are paginated: `limit` (1 to 1000, default 100) and the cursor `after`; \
each page carries `next`, the `after` of the following page, or null on the last page.";

/// The Swagger UI configuration: where the page finds the document
/// (relative, so the UI also works behind a path prefix).
pub(crate) fn swagger_config() -> Arc<utoipa_swagger_ui::Config<'static>> {
    Arc::new(
        utoipa_swagger_ui::Config::from("../openapi.json")
            // The default sends the document to an online validator.
            .validator_url("none")
            .persist_authorization(true)
            .display_request_duration(true),
    )
}

/// Completes the document collected from the routes: title, description,
/// tags, the security scheme, and on every operation of `protected` paths
/// the security requirement and the 401 and 403 responses.
pub(crate) fn complete(mut document: OpenApi, protected: &[String]) -> OpenApi {
    document.info.title = "Sockeye admin API".into();
    document.info.version = env!("CARGO_PKG_VERSION").into();
    document.info.description = Some(DESCRIPTION.into());
    // The defaults describe the utoipa crate itself, not this API.
    document.info.contact = None;
    document.info.license = Some(utoipa::openapi::License::new(env!("CARGO_PKG_LICENSE")));
    document.tags = Some(vec![
        tag(
            "topics",
            "Topics, their stored history, and publishing over HTTP",
        ),
        tag("connections", "WebSocket connections"),
        tag("stats", "Broker statistics"),
        tag("meta", "Probes, metrics, this document and its UI"),
    ]);
    let components = document.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        SECURITY_SCHEME,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT or API key")
                .description(Some(
                    "An admin token (`sockeye token --sub NAME --admin`) or a configured API key",
                ))
                .build(),
        ),
    );
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for (path, item) in document.paths.paths.iter_mut() {
        if !protected.contains(path) {
            continue;
        }
        for operation in operations(item) {
            operation.security = Some(vec![SecurityRequirement::new(
                SECURITY_SCHEME,
                Vec::<String>::new(),
            )]);
            let responses = &mut operation.responses.responses;
            responses.insert(
                "401".into(),
                error("Missing or invalid credentials (`token_missing` or another `token_*` code)")
                    .into(),
            );
            responses.insert(
                "403".into(),
                error("A valid token without the `admin` claim (`not_admin`)").into(),
            );
        }
    }
    document
}

fn tag(name: &str, description: &str) -> utoipa::openapi::Tag {
    utoipa::openapi::tag::TagBuilder::new()
        .name(name)
        .description(Some(description))
        .build()
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
        &mut item.head,
        &mut item.options,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// The OpenAPI document.
///
/// This document, OpenAPI 3.1, exactly as the committed `docs/openapi.json`.
#[utoipa::path(
    get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object))
)]
pub(crate) async fn openapi_json(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi_json.clone(),
    )
        .into_response()
}

/// Swagger UI (redirect).
///
/// Redirects to `/docs/`, the Swagger UI page.
#[utoipa::path(
    get, path = "/docs", tag = "meta",
    responses((status = 303, description = "Redirect to `/docs/`"))
)]
pub(crate) async fn docs_redirect() -> Redirect {
    // Relative, so that it also works behind a path prefix.
    Redirect::to("docs/")
}

/// Swagger UI.
///
/// The interactive documentation of this API. Works offline: every file is
/// served from the binary.
#[utoipa::path(
    get, path = "/docs/", tag = "meta",
    responses((status = 200, description = "The Swagger UI page", content_type = "text/html", body = String))
)]
pub(crate) async fn docs_index(State(state): State<AppState>) -> Result<Response, ApiError> {
    ui_file(&state, "")
}

/// Path of a Swagger UI file.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct UiFilePath {
    /// A file of the Swagger UI, like `swagger-ui.css`.
    file: String,
}

/// Swagger UI file.
///
/// A script, style sheet or image of the Swagger UI page.
#[utoipa::path(
    get, path = "/docs/{file}", tag = "meta",
    params(UiFilePath),
    responses(
        (status = 200, description = "The file"),
        (status = 404, description = "No such file (`not_found`)", body = ErrorBody),
    )
)]
pub(crate) async fn docs_file(
    State(state): State<AppState>,
    Path(path): Path<UiFilePath>,
) -> Result<Response, ApiError> {
    ui_file(&state, &path.file)
}

fn ui_file(state: &AppState, file: &str) -> Result<Response, ApiError> {
    let served = utoipa_swagger_ui::serve(file, Arc::clone(&state.swagger)).map_err(|err| {
        ApiError::Internal {
            cause: format!("serving the Swagger UI file `{file}` failed: {err}"),
        }
    })?;
    let Some(served) = served else {
        return Err(ApiError::NotFound {
            code: "not_found",
            message: format!("no Swagger UI file `{file}`"),
        });
    };
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, served.content_type)],
        served.bytes.into_owned(),
    )
        .into_response();
    if served.gzpipped {
        response.headers_mut().insert(
            header::CONTENT_ENCODING,
            header::HeaderValue::from_static("gzip"),
        );
    }
    Ok(response)
}
