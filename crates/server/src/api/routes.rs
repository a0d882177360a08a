//! HTTP routing: paths to interactions, plus the layers every request passes (request id,
//! tracing, body limit, panic catching, and the guarantee that errors are OperationOutcomes).

use std::collections::HashSet;

use axum::Router;
use axum::body::{Body as AxumBody, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, Path, RawQuery, Request, State};
use axum::http::header::{self, HeaderMap};
use axum::http::{StatusCode, Uri};
use axum::middleware;
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use super::ApiState;
use super::capability::{Interaction, SUPPORTED};
use super::context::Ctx;
use super::error::ApiError;
use super::format::{
    self, Format, Params, ReturnPreference, check_content_type, negotiate, render,
};
use super::interactions::{self as ix, ReadConditions};
use super::{bundle, capability, lake_status};
use crate::auth::Caller;
use crate::auth::http::{Authn, authenticate};

/// Header carrying the request id (set when the client sends none, echoed in the response).
const REQUEST_ID: &str = "x-request-id";

pub(super) fn router(state: ApiState) -> Router {
    let body_limit = state.config().body_limit;
    let base = "/datastore/{ds}/r4";
    let mut routes = Router::new()
        .route("/metadata", get(root_metadata))
        .route("/metrics", get(metrics_handler))
        .route(&format!("{base}/$lake-status"), get(lake_status_handler))
        .route(
            &format!("{base}/.well-known/smart-configuration"),
            get(smart_configuration),
        );
    // One route per advertised interaction: the CapabilityStatement is generated from the
    // same table, so the two cannot disagree.
    let mut seen = HashSet::new();
    for interaction in SUPPORTED {
        let path = format!("{base}{}", interaction.path());
        if !seen.insert((interaction.method(), path.clone())) {
            continue;
        }
        let handler = match interaction {
            Interaction::Read => get(read),
            Interaction::Vread => get(vread),
            Interaction::Update => put(update),
            Interaction::Delete => delete(delete_handler),
            Interaction::HistoryInstance => get(instance_history),
            Interaction::HistoryType => get(type_history),
            Interaction::Create => post(create),
            Interaction::Transaction | Interaction::Batch => post(system_post),
            Interaction::HistorySystem => get(system_history),
            Interaction::Capabilities => get(metadata),
            Interaction::SearchType => get(search_type),
            Interaction::SearchTypePost => post(search_type_post),
            Interaction::SearchSystem => get(search_system),
            Interaction::ConditionalUpdate => put(conditional_update),
            Interaction::ConditionalDelete => delete(conditional_delete),
        };
        if let Some(without_slash) = path.strip_suffix('/') {
            routes = routes.route(without_slash, handler.clone());
        }
        routes = routes.route(&path, handler);
    }
    let authn = Authn::new(
        state.registry().clone(),
        state.origin().clone(),
        state.config().access_key.clone(),
        state.config().open,
        body_limit,
    );
    let routes = routes
        .fallback(unknown_path)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(middleware::from_fn_with_state(authn, authenticate));
    let request_id = axum::http::HeaderName::from_static(REQUEST_ID);
    routes
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::map_response(ensure_outcome))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<AxumBody>| {
                    let id = req
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!(
                        "request",
                        id = %id,
                        method = %req.method(),
                        uri = %req.uri()
                    )
                })
                .on_response(
                    DefaultOnResponse::new()
                        .level(Level::INFO)
                        .latency_unit(tower_http::LatencyUnit::Micros),
                ),
        )
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// Parsed common request context; an `Err` is the finished error response.
struct Prepared {
    ctx: Ctx,
    format: Format,
    params: Params,
}

fn prepare(
    state: &ApiState,
    ds_id: &str,
    headers: &HeaderMap,
    query: Option<&str>,
    caller: Caller,
) -> Result<Prepared, Box<Response>> {
    let params = Params::parse(query);
    let format =
        negotiate(headers, &params).map_err(|e| Box::new(render(Err(e), Format::default(), "")))?;
    let Some(live) = state.datastore(ds_id) else {
        return Err(Box::new(render(
            Err(ApiError::not_found(format!(
                "No data store with id '{ds_id}'"
            ))),
            format,
            "",
        )));
    };
    let base = state.origin().fhir_base(headers, &live.ds.id);
    Ok(Prepared {
        ctx: Ctx {
            state: state.clone(),
            ds: live.ds.clone(),
            live,
            base,
            caller,
        },
        format,
        params,
    })
}

macro_rules! prepared {
    ($state:expr, $ds:expr, $headers:expr, $query:expr, $caller:expr) => {
        match prepare(&$state, &$ds, &$headers, $query.as_deref(), $caller) {
            Ok(p) => p,
            Err(response) => return *response,
        }
    };
}

/// The body of a write, with the Content-Type and size checks.
fn write_body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    check_content_type(headers)?;
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(
                "The request body is larger than this server's limit (see --max-body-bytes)",
            )
        } else {
            ApiError::new(
                status,
                ApiError::code_for_status(status),
                format!("Cannot read the request body: {}", rejection.body_text()),
            )
        }
    })
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn read_conditions(headers: &HeaderMap) -> ReadConditions {
    ReadConditions {
        if_none_match: header_str(headers, header::IF_NONE_MATCH).map(String::from),
        if_modified_since: header_str(headers, header::IF_MODIFIED_SINCE).map(String::from),
    }
}

fn type_of(name: &str) -> Result<&'static str, ApiError> {
    ix::resource_type(name)
}

async fn root_metadata(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let params = Params::parse(query.as_deref());
    let format = match negotiate(&headers, &params) {
        Ok(f) => f,
        Err(e) => return render(Err(e), Format::default(), ""),
    };
    render(
        capability::reply(&state.origin().root(&headers), None, None),
        format,
        "",
    )
}

async fn metadata(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(ds): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = prepared!(state, ds, headers, query, caller);
    render(
        capability::reply(
            &p.ctx.base,
            Some(&p.ctx.ds),
            p.ctx.live.auth.smart_metadata(),
        ),
        p.format,
        &p.ctx.base,
    )
}

/// SMART's discovery document: the data store's `Metadata`, public (SMART App Launch; the
/// guide's "Fetching a SMART on FHIR enabled data store's Discovery Document").
async fn smart_configuration(State(state): State<ApiState>, Path(ds): Path<String>) -> Response {
    let document = state
        .datastore(&ds)
        .and_then(|live| live.auth.smart_metadata().map(|m| m.document.clone()));
    match document {
        Some(document) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(AxumBody::from(
                serde_json::Value::Object(document).to_string(),
            ))
            .expect("static response parts"),
        None => render(
            Err(ApiError::not_found(format!(
                "No SMART on FHIR data store with id '{ds}' (its AuthorizationStrategy is \
                 not SMART_ON_FHIR_V1 or SMART_ON_FHIR)"
            ))),
            Format::default(),
            "",
        ),
    }
}

async fn lake_status_handler(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(ds): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = prepared!(state, ds, headers, query, caller);
    let result = match p.ctx.caller.system_any("$lake-status") {
        Ok(()) => lake_status::reply(&p.ctx).await,
        Err(e) => Err(e.into()),
    };
    render(result, p.format, &p.ctx.base)
}

async fn system_post(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(ds): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let p = prepared!(state, ds, headers, query, caller);
    let result = async {
        let body = write_body(&headers, body)?;
        bundle::process(&p.ctx, &body, ReturnPreference::from_headers(&headers)).await
    }
    .await;
    render(result, p.format, &p.ctx.base)
}

async fn create(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((ds, ty)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let p = prepared!(state, ds, headers, query, caller);
    let result = async {
        let ty = type_of(&ty)?;
        let body = write_body(&headers, body)?;
        ix::create(
            &p.ctx,
            ty,
            &body,
            header_str(&headers, header::HeaderName::from_static("if-none-exist")),
            ReturnPreference::from_headers(&headers),
        )
        .await
    }
    .await;
    render(result, p.format, &p.ctx.base)
}

async fn read(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((ds, ty, id)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = prepared!(state, ds, headers, query, caller);
    let result = async {
        let ty = type_of(&ty)?;
        ix::read(&p.ctx, ty, &id, &read_conditions(&headers)).await
    }
    .await;
    render(result, p.format, &p.ctx.base)
}

async fn vread(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((ds, ty, id, vid)): Path<(String, String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = prepared!(state, ds, headers, query, caller);
    let result = async {
        let ty = type_of(&ty)?;
        ix::vread(&p.ctx, ty, &id, &vid, &read_conditions(&headers)).await
    }
    .await;
    render(result, p.format, &p.ctx.base)
}

async fn update(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((ds, ty, id)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let p = prepared!(state, ds, headers, query, caller);
    let result = async {
        let ty = type_of(&ty)?;
        let if_match = ix::parse_if_match(header_str(&headers, header::IF_MATCH))?;
        let body = write_body(&headers, body)?;
        ix::update(
            &p.ctx,
            ty,
            &id,
            &body,
            if_match,
            ReturnPreference::from_headers(&headers),
        )
        .await
    }
    .await;
    render(result, p.format, &p.ctx.base)
}

async fn delete_handler(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((ds, ty, id)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = prepared!(state, ds, headers, query, caller);
    let result = async {
        let ty = type_of(&ty)?;
        let if_match = ix::parse_if_match(header_str(&headers, header::IF_MATCH))?;
        ix::delete(&p.ctx, ty, &id, if_match).await
    }
    .await;
    render(result, p.format, &p.ctx.base)
}

async fn system_history(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(ds): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = prepared!(state, ds, headers, query, caller);
    let result = ix::history(&p.ctx, None, None, &p.params).await;
    render(result, p.format, &p.ctx.base)
}

async fn type_history(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((ds, ty)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = prepared!(state, ds, headers, query, caller);
    let result = async {
        let ty = type_of(&ty)?;
        ix::history(&p.ctx, Some(ty), None, &p.params).await
    }
    .await;
    render(result, p.format, &p.ctx.base)
}

async fn instance_history(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((ds, ty, id)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = prepared!(state, ds, headers, query, caller);
    let result = async {
        let ty = type_of(&ty)?;
        ix::history(&p.ctx, Some(ty), Some(&id), &p.params).await
    }
    .await;
    render(result, p.format, &p.ctx.base)
}

async fn unknown_path(uri: Uri) -> Response {
    render(
        Err(ApiError::not_found(format!(
            "Unknown path '{}': FHIR endpoints live under /datastore/{{datastoreId}}/r4/",
            uri.path()
        ))),
        Format::default(),
        "",
    )
}

async fn method_not_allowed() -> Response {
    render(Err(ApiError::method_not_allowed()), Format::default(), "")
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    render(
        Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "Internal server error: the request handler failed unexpectedly",
        )),
        Format::default(),
        "",
    )
}

/// Turns any error response that is not JSON yet (axum's own rejections, for instance) into
/// an OperationOutcome with the same status.
async fn ensure_outcome(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(format::FHIR_JSON) || v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let diagnostics = if text.is_empty() {
        status.canonical_reason().unwrap_or("Error").to_string()
    } else {
        text
    };
    let mut fixed = render(
        Err(ApiError::new(
            status,
            ApiError::code_for_status(status),
            diagnostics,
        )),
        Format::default(),
        "",
    );
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fixed.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fixed
}

/// Search parameters of a request: the query string, or the form body of `_search`, never
/// both (the reference guide's rule).
fn search_params(
    query: &Params,
    headers: &HeaderMap,
    body: Option<&[u8]>,
) -> Result<Vec<(String, String)>, ApiError> {
    let mut params: Vec<(String, String)> = query.0.clone();
    if let Some(body) = body.filter(|b| !b.iter().all(u8::is_ascii_whitespace)) {
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::bad_request("the _search body is not UTF-8 text"))?
            .trim();
        // The guide's examples wrap the query in braces: `{birthdate=eq1997}`.
        let text = text
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(text);
        let content_type = header_str(headers, header::CONTENT_TYPE).unwrap_or("");
        if !(content_type.is_empty()
            || content_type.starts_with("application/x-www-form-urlencoded")
            || content_type.starts_with("application/json"))
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not-supported",
                format!(
                    "_search takes a form body (application/x-www-form-urlencoded), not '{content_type}'"
                ),
            ));
        }
        let from_body = Params::parse(Some(text)).0;
        let searchable = |k: &String| k != "_format" && k != "_pretty";
        if from_body.iter().any(|(k, _)| searchable(k)) && params.iter().any(|(k, _)| searchable(k))
        {
            return Err(ApiError::bad_request(
                "search parameters were given both in the URL and in the body; use one or the other",
            ));
        }
        params.extend(from_body);
    }
    Ok(params)
}

fn lenient(headers: &HeaderMap) -> bool {
    super::search::lenient(header_str(
        headers,
        header::HeaderName::from_static("prefer"),
    ))
}

async fn search_type(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((ds, ty)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = prepared!(state, ds, headers, query, caller);
    let result = async {
        let ty = type_of(&ty)?;
        let params = search_params(&p.params, &headers, None)?;
        super::search::search(&p.ctx, ty, &params, lenient(&headers), ty).await
    }
    .await;
    render(result, p.format, &p.ctx.base)
}

async fn search_type_post(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((ds, ty)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let p = prepared!(state, ds, headers, query, caller);
    let result = async {
        let ty = type_of(&ty)?;
        let body = body.map_err(|r| ApiError::bad_request(r.body_text()))?;
        let params = search_params(&p.params, &headers, Some(&body))?;
        super::search::search(&p.ctx, ty, &params, lenient(&headers), ty).await
    }
    .await;
    render(result, p.format, &p.ctx.base)
}

/// `GET [base]?_type=A[,B]&...`: a search of each listed type (common parameters only when
/// there are several).
async fn search_system(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(ds): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = prepared!(state, ds, headers, query, caller);
    let result = async {
        let Some(types) = p.params.get("_type") else {
            return Err(ApiError::unsupported(
                "system-level search needs _type (for example ?_type=Patient&_id=123)",
            ));
        };
        let types: Vec<&'static str> = types
            .split(',')
            .map(type_of)
            .collect::<Result<_, _>>()?;
        let params: Vec<(String, String)> = p
            .params
            .0
            .iter()
            .filter(|(k, _)| k != "_type")
            .cloned()
            .collect();
        match types.as_slice() {
            [one] => super::search::search(&p.ctx, one, &params, lenient(&headers), one).await,
            _ => Err(ApiError::unsupported(
                "system-level search over several types is not supported yet; search one _type at a time",
            )),
        }
    }
    .await;
    render(result, p.format, &p.ctx.base)
}

async fn conditional_update(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((ds, ty)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let p = prepared!(state, ds, headers, query, caller);
    let result = async {
        let ty = type_of(&ty)?;
        let body = write_body(&headers, body)?;
        ix::conditional_update(
            &p.ctx,
            ty,
            &p.params.0,
            &body,
            ReturnPreference::from_headers(&headers),
        )
        .await
    }
    .await;
    render(result, p.format, &p.ctx.base)
}

async fn conditional_delete(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((ds, ty)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = prepared!(state, ds, headers, query, caller);
    let result = async {
        let ty = type_of(&ty)?;
        ix::conditional_delete(&p.ctx, ty, &p.params.0).await
    }
    .await;
    render(result, p.format, &p.ctx.base)
}

async fn metrics_handler(State(state): State<ApiState>) -> Response {
    match lake_status::metrics(&state).await {
        Ok(text) => Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(AxumBody::from(text))
            .expect("static response parts"),
        Err(e) => render(Err(e), Format::default(), ""),
    }
}
