//! Errors over HTTP as RFC 9457 problem details (`application/problem+json`), carrying the same
//! diagnostic codes and help as the CLI's errors.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use miette::Diagnostic;
use serde_json::json;

use crate::execute::ExecuteError;
use crate::inspect::InspectError;
use crate::plan::PlanError;
use crate::store::StoreError;

/// A problem detail: what went wrong, its diagnostic code and what to do.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    /// The CLI's diagnostic code (`salvage::approve::stale`…), when the error has one.
    pub code: Option<String>,
    pub detail: String,
    pub help: Option<String>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>, help: Option<&str>) -> Problem {
        Problem { status, code: Some(code.to_owned()), detail: detail.into(), help: help.map(str::to_owned) }
    }

    /// A typed error with its diagnostic code and help.
    pub fn of(status: StatusCode, error: &dyn Diagnostic) -> Problem {
        Problem {
            status,
            code: error.code().map(|code| code.to_string()),
            detail: error.to_string(),
            help: error.help().map(|help| help.to_string()),
        }
    }

    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "salvage::web::unauthenticated",
            detail,
            Some("send `Authorization: Bearer TOKEN` with a token from `salvage token add NAME`"),
        )
    }

    pub fn forbidden(code: &str, detail: impl Into<String>, help: Option<&str>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, code, detail, help)
    }

    pub fn not_found(code: &str, detail: impl Into<String>, help: Option<&str>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, code, detail, help)
    }

    pub fn bad_request(code: &str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, code, detail, None)
    }

    /// The title of the status (`Conflict`), as problem details name it.
    pub fn title(&self) -> &'static str {
        self.status.canonical_reason().unwrap_or("Error")
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut body = json!({
            "type": "about:blank",
            "title": self.title(),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(code) = &self.code {
            body["code"] = json!(code);
        }
        if let Some(help) = &self.help {
            body["help"] = json!(help);
        }
        body
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, code = ?self.code, detail = %self.detail, "An HTTP request failed.");
        }
        let mut response = (self.status, self.to_json().to_string()).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        response
    }
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Problem {
        Problem::of(store_status(&error), &error)
    }
}

impl From<ExecuteError> for Problem {
    fn from(error: ExecuteError) -> Problem {
        let status = match &error {
            ExecuteError::Store(store) => return Problem::of(store_status(store), &error),
            ExecuteError::Plan(plan) => return Problem::from_plan(plan, &error),
            ExecuteError::NotFound { .. } => StatusCode::NOT_FOUND,
            ExecuteError::NotAnApprover { .. }
            | ExecuteError::SelfApproval { .. }
            | ExecuteError::NoApprovers { .. }
            | ExecuteError::BadActor { .. } => StatusCode::FORBIDDEN,
            ExecuteError::StaleApproval { .. }
            | ExecuteError::StalePlan { .. }
            | ExecuteError::SetsChanged { .. }
            | ExecuteError::AnsweredBy { .. }
            | ExecuteError::NotWaiting { .. }
            | ExecuteError::Busy { .. }
            | ExecuteError::LostOwnership { .. } => StatusCode::CONFLICT,
            ExecuteError::BadPlan { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Problem::of(status, &error)
    }
}

impl From<InspectError> for Problem {
    fn from(error: InspectError) -> Problem {
        let status = match &error {
            InspectError::Store(store) => store_status(store),
            InspectError::RunNotFound { .. } | InspectError::ComparisonRunNotFound { .. } => StatusCode::NOT_FOUND,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Problem::of(status, &error)
    }
}

impl From<PlanError> for Problem {
    fn from(error: PlanError) -> Problem {
        Problem::from_plan(&error, &error)
    }
}

impl Problem {
    fn from_plan(plan: &PlanError, shown: &dyn Diagnostic) -> Problem {
        let status = match plan {
            PlanError::Inspect(InspectError::RunNotFound { .. }) => StatusCode::NOT_FOUND,
            PlanError::Inspect(InspectError::Store(store)) | PlanError::Store(store) => store_status(store),
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Problem::of(status, shown)
    }
}

fn store_status(error: &StoreError) -> StatusCode {
    match error {
        StoreError::Conflict { .. } => StatusCode::CONFLICT,
        StoreError::CorruptRecord { .. } | StoreError::NotARun { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        StoreError::InvalidRunId { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}
