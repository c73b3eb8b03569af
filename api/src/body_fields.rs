//! Naming the field of a JSON request body that the parser refused.
//!
//! poem-openapi names a field when one of its validators fails (a value out of range), but not
//! when a value has the wrong type or is not one of an enum's values: its message then names only
//! types ("failed to parse \"ExportFormat\" …"). [`BodyFields`] keeps each `POST` body and, when
//! the operation answers 400 without a field, finds the first field of the body that does not fit
//! the operation's schema in the generated spec, and answers with its dotted path
//! (`filters.min_sessions`, `filters.client_ips[2]`). The check is pure ([`offending_field`]);
//! it only reads the spec the operations were generated with, so it cannot drift from them.

use std::sync::Arc;

use poem::{Endpoint, IntoResponse, Middleware, Request, Response, http::Method};
use serde_json::Value;

use crate::error::ApiError;

/// Middleware that names the offending field of a refused JSON body.
#[derive(Debug, Clone)]
pub struct BodyFields(pub Arc<Value>);

impl BodyFields {
    /// From the generated spec (JSON text).
    #[must_use]
    pub fn new(spec_json: &str) -> Self {
        Self(Arc::new(serde_json::from_str(spec_json).unwrap_or(Value::Null)))
    }
}

impl<E: Endpoint> Middleware<E> for BodyFields {
    type Output = BodyFieldsEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        BodyFieldsEndpoint { inner: ep, spec: self.0.clone() }
    }
}

/// The endpoint [`BodyFields`] wraps.
#[derive(Debug)]
pub struct BodyFieldsEndpoint<E> {
    inner: E,
    spec: Arc<Value>,
}

impl<E: Endpoint> Endpoint for BodyFieldsEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Self::Output> {
        if req.method() != Method::POST {
            return self.inner.call(req).await.map(IntoResponse::into_response);
        }
        let path = req.uri().path().to_string();
        let bytes = req.take_body().into_bytes().await?;
        req.set_body(bytes.clone());
        match self.inner.call(req).await {
            Ok(resp) => Ok(resp.into_response()),
            Err(e) if e.status() == poem::http::StatusCode::BAD_REQUEST && !e.to_string().contains('`') => {
                let field = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .zip(request_schema(&self.spec, &path))
                    .and_then(|(body, schema)| offending_field(&self.spec, schema, &body));
                match field {
                    Some(field) => Ok(ApiError::bad_request(&field, e.to_string()).into_response()),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// The JSON request body schema of the `POST` operation serving `path`.
fn request_schema<'a>(spec: &'a Value, path: &str) -> Option<&'a Value> {
    let paths = spec.get("paths")?.as_object()?;
    let template = paths.keys().find(|t| matches_template(t, path))?;
    let content = paths[template].get("post")?.get("requestBody")?.get("content")?.as_object()?;
    content.iter().find(|(media, _)| media.starts_with("application/json")).and_then(|(_, c)| c.get("schema"))
}

/// Whether `path` fits `template` (`/api/ntp/interfaces/{name}/start`).
fn matches_template(template: &str, path: &str) -> bool {
    let (mut t, mut p) = (template.split('/'), path.split('/'));
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a == b || (a.starts_with('{') && a.ends_with('}') && !b.is_empty()) => {}
            _ => return false,
        }
    }
}

/// The schema a `$ref`, or an `allOf` holding one, points at.
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    let target = schema.get("$ref").or_else(|| schema.get("allOf")?.as_array()?.iter().find_map(|s| s.get("$ref")));
    target
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .and_then(|name| spec.get("components")?.get("schemas")?.get(name))
        .unwrap_or(schema)
}

/// The dotted path of the first value in `body` that does not fit `schema`: a wrong type, a
/// string outside the enum, an integer outside its format, an unknown or missing field. `None`
/// when everything fits (the parser refused something this check does not model).
#[must_use]
pub fn offending_field(spec: &Value, schema: &Value, body: &Value) -> Option<String> {
    check(spec, schema, body, "")
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

fn check(spec: &Value, schema: &Value, v: &Value, at: &str) -> Option<String> {
    let schema = resolve(spec, schema);
    if v.is_null() {
        return None; // optional fields take null; a required one is caught by its parent
    }
    let wrong = || Some(if at.is_empty() { "body".to_string() } else { at.to_string() });
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(obj) = v.as_object() else { return wrong() };
            let props = schema.get("properties").and_then(Value::as_object);
            for (name, value) in obj {
                match props.and_then(|p| p.get(name)) {
                    Some(s) => {
                        if let Some(f) = check(spec, s, value, &join(at, name)) {
                            return Some(f);
                        }
                    }
                    None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => return Some(join(at, name)),
                    None => {}
                }
            }
            let required = schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str);
            required.into_iter().find(|r| obj.get(*r).is_none_or(Value::is_null)).map(|r| join(at, r))
        }
        Some("array") => {
            let Some(items) = v.as_array() else { return wrong() };
            let item = schema.get("items")?;
            items.iter().enumerate().find_map(|(i, x)| check(spec, item, x, &format!("{at}[{i}]")))
        }
        Some("string") => {
            let Some(s) = v.as_str() else { return wrong() };
            let allowed = schema.get("enum").and_then(Value::as_array);
            if allowed.is_some_and(|a| !a.iter().any(|x| x.as_str() == Some(s))) { wrong() } else { None }
        }
        Some("integer") => {
            let fits = match schema.get("format").and_then(Value::as_str) {
                Some("uint64") => v.as_u64().is_some(),
                Some("uint32") => v.as_u64().is_some_and(|n| u32::try_from(n).is_ok()),
                Some("uint16") => v.as_u64().is_some_and(|n| u16::try_from(n).is_ok()),
                Some("uint8") => v.as_u64().is_some_and(|n| u8::try_from(n).is_ok()),
                Some("int64") => v.as_i64().is_some(),
                Some("int32") => v.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
                Some("int16") => v.as_i64().is_some_and(|n| i16::try_from(n).is_ok()),
                Some("int8") => v.as_i64().is_some_and(|n| i8::try_from(n).is_ok()),
                _ => v.as_i64().is_some() || v.as_u64().is_some(),
            };
            if fits { None } else { wrong() }
        }
        Some("number") => {
            if v.is_number() {
                None
            } else {
                wrong()
            }
        }
        Some("boolean") => {
            if v.is_boolean() {
                None
            } else {
                wrong()
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec() -> Value {
        serde_json::from_str(&crate::openapi().spec()).expect("spec")
    }

    fn field(path: &str, body: &Value) -> Option<String> {
        let spec = spec();
        let schema = request_schema(&spec, path).expect("operation with a JSON body");
        offending_field(&spec, schema, body)
    }

    #[test]
    fn the_first_value_that_does_not_fit_is_named() {
        let export = "/api/ntp/history/export";
        assert_eq!(field(export, &json!({"format": "xml"})).as_deref(), Some("format"));
        assert_eq!(field(export, &json!({"format": "csv", "limit": "ten"})).as_deref(), Some("limit"));
        assert_eq!(field(export, &json!({"limit": -1})).as_deref(), Some("limit"));
        assert_eq!(field(export, &json!({"filters": {"min_sessions": "x"}})).as_deref(), Some("filters.min_sessions"));
        assert_eq!(field(export, &json!({"filters": {"client_ips": ["198.18.0.1", 7]}})).as_deref(), Some("filters.client_ips[1]"));
        assert_eq!(field(export, &json!({"filters": {"has_kod": "yes"}})).as_deref(), Some("filters.has_kod"));
        assert_eq!(field(export, &json!([1, 2])).as_deref(), Some("body"));
        assert_eq!(field(export, &json!({"format": "csv", "limit": 10, "filters": {"hosts": ["a"]}})), None);
        let search = "/api/ntp/history/search";
        assert_eq!(field(search, &json!({"pagination": {"page_size": "many"}})).as_deref(), Some("pagination.page_size"));
        assert_eq!(field(search, &json!({"sort": "loudest"})).as_deref(), Some("sort"));
        assert_eq!(field(search, &json!({"filters": {"interface_names": "eth0"}})).as_deref(), Some("filters.interface_names"));
        assert_eq!(field("/api/ntp/interfaces/eth0/start", &json!({"port": "ntp"})).as_deref(), Some("port"));
        assert_eq!(field("/api/ntp/interfaces/eth0/start", &json!({"port": 123, "timeout": "2s"})).as_deref(), Some("timeout"));
    }

    #[test]
    fn paths_fit_their_templates() {
        assert!(matches_template("/api/ntp/interfaces/{name}/start", "/api/ntp/interfaces/eth0.100/start"));
        assert!(!matches_template("/api/ntp/interfaces/{name}/start", "/api/ntp/interfaces//start"));
        assert!(!matches_template("/api/ntp/interfaces/{name}/start", "/api/ntp/interfaces/eth0/stop"));
        assert!(!matches_template("/api/ntp/history/search", "/api/ntp/history/search/x"));
    }
}
