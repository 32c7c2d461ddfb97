//! Who may see the map: with tokens configured, a token holding `admin` or `viewer`, sent as
//! `Authorization: Bearer TOKEN` (scripts) or as the `dispatch_token` cookie that `POST /login`
//! sets (browsers, which cannot add a header to a page load or an EventSource). Without
//! tokens, everything is open, as on the gRPC side. `/metrics` and `/login` need no token.
//!
//! The check is the gRPC side's [`Authenticator`](crate::grpc::auth::Authenticator): the same
//! tokens, the same constant-time comparison, and the token itself is never logged.

use axum::Form;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::{ApiError, AppState};
use crate::config::Role;
use crate::grpc::auth::{AuthError, bearer};

/// The cookie `POST /login` sets.
const COOKIE: &str = "dispatch_token";

/// Lets a request through if its token may view the map. API calls are refused with a JSON
/// 401/403; a page load without a token is sent to the login form.
pub(super) async fn require_viewer(
    State(s): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let token = bearer(headers).or_else(|| cookie(headers));
    match s.auth.check_token(Role::Viewer, token) {
        Ok(()) => next.run(request).await,
        Err(why) => {
            let api = request.uri().path().starts_with("/api/");
            match why {
                AuthError::Missing if !api => Redirect::to("/login").into_response(),
                AuthError::Missing => ApiError(
                    StatusCode::UNAUTHORIZED,
                    "missing token: send `Authorization: Bearer <token>` or log in at /login"
                        .into(),
                )
                .into_response(),
                AuthError::Unknown => ApiError(
                    StatusCode::UNAUTHORIZED,
                    "unknown token: log in again at /login".into(),
                )
                .into_response(),
                AuthError::Forbidden { name, .. } => ApiError(
                    StatusCode::FORBIDDEN,
                    format!("token `{name}` lacks the `viewer` (or `admin`) role the map needs"),
                )
                .into_response(),
            }
        }
    }
}

/// The `dispatch_token` cookie's value, if sent.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

const LOGIN_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>dispatch: log in</title></head>
<body><h1>dispatch live map</h1><p>{message}</p>
<form method="post" action="/login">
<label>Token <input type="password" name="token" autofocus></label>
<button type="submit">Log in</button>
</form></body></html>
"#;

fn login_page(status: StatusCode, message: &str) -> Response {
    let body = LOGIN_PAGE.replace("{message}", message);
    (status, Html(body)).into_response()
}

/// `GET /login`: the form.
pub(super) async fn login_form() -> Response {
    login_page(
        StatusCode::OK,
        "Enter a token with the viewer or admin role.",
    )
}

/// The login form's fields.
#[derive(Debug, serde::Deserialize)]
pub(super) struct Login {
    token: String,
}

/// `POST /login`: a valid token is stored in a cookie and the browser goes to the map.
pub(super) async fn login(
    State(s): State<AppState>,
    form: Result<Form<Login>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(Login { token })) = form else {
        return login_page(
            StatusCode::BAD_REQUEST,
            "Send the form with a `token` field.",
        );
    };
    let token = token.trim();
    match s.auth.check_token(Role::Viewer, Some(token)) {
        Ok(()) => {}
        Err(AuthError::Forbidden { .. }) => {
            return login_page(
                StatusCode::FORBIDDEN,
                "That token lacks the viewer (or admin) role the map needs.",
            );
        }
        Err(_) => return login_page(StatusCode::UNAUTHORIZED, "Unknown token; try again."),
    }
    // A cookie value cannot hold spaces, quotes, commas, semicolons or backslashes.
    if !token
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b"\",;\\".contains(&b))
    {
        return login_page(
            StatusCode::BAD_REQUEST,
            "This token has characters a cookie cannot hold; send it as an \
             `Authorization: Bearer` header instead.",
        );
    }
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/"),
            (header::SET_COOKIE, cookie.as_str()),
        ],
    )
        .into_response()
}
