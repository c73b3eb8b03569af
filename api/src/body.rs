//! An optional JSON request body, for operations whose every field is optional (capture stop):
//! no body, an empty body, `null` or `{}` all mean "no options", and the spec marks the body
//! as not required.
//!
//! poem-openapi's `Json<T>` refuses a request without `Content-Type` even when the body is
//! empty, and the seed's clients stop a capture with a bare `POST`. A body that is not empty
//! still needs `application/json` (415 otherwise) and must parse (400 otherwise).

use poem::{FromRequest, Request, RequestBody};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions,
    error::{ContentTypeError, ParseRequestPayloadError},
    payload::{Json, ParsePayload, Payload},
    registry::{MetaMediaType, MetaRequest, MetaSchemaRef, Registry},
    types::{ParseFromJSON, Type},
};

/// A JSON body that may be absent.
#[derive(Debug, Clone, Default)]
pub struct OptionalJson<T>(pub Option<T>);

impl<T: Type> Payload for OptionalJson<T> {
    const CONTENT_TYPE: &'static str = <Json<T> as Payload>::CONTENT_TYPE;

    fn check_content_type(content_type: &str) -> bool {
        <Json<T> as Payload>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: ParseFromJSON> ParsePayload for OptionalJson<T> {
    const IS_REQUIRED: bool = false;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let data = <Vec<u8> as FromRequest>::from_request(request, body).await?;
        parse(&data).map(Self)
    }
}

fn parse<T: ParseFromJSON>(data: &[u8]) -> poem::Result<Option<T>> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_slice(data).map_err(|e| ParseRequestPayloadError { reason: e.to_string() })?;
    Ok(<Option<T>>::parse_from_json(Some(value)).map_err(|e| ParseRequestPayloadError { reason: e.into_message() })?)
}

impl<'a, T: ParseFromJSON> ApiExtractor<'a> for OptionalJson<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <Self as Payload>::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType { content_type: <Self as Payload>::CONTENT_TYPE, schema: <Self as Payload>::schema_ref() }],
            required: false,
        })
    }

    async fn from_request(request: &'a Request, body: &mut RequestBody, _opts: ExtractParamOptions<()>) -> poem::Result<Self> {
        match request.content_type() {
            Some(ct) if <Self as Payload>::check_content_type(ct) => <Self as ParsePayload>::from_request(request, body).await,
            Some(ct) => Err(ContentTypeError::NotSupported { content_type: ct.to_string() }.into()),
            None => {
                let data = <Vec<u8> as FromRequest>::from_request(request, body).await?;
                if data.iter().all(u8::is_ascii_whitespace) { Ok(Self(None)) } else { Err(ContentTypeError::ExpectContentType.into()) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dto::StopCapture;

    #[test]
    fn empty_null_and_objects_parse() {
        assert!(parse::<StopCapture>(b"").expect("empty").is_none());
        assert!(parse::<StopCapture>(b" \n").expect("blank").is_none());
        assert!(parse::<StopCapture>(b"null").expect("null").is_none());
        assert!(parse::<StopCapture>(b"{}").expect("{}").is_some_and(|s| s.agent.is_none()));
        assert_eq!(parse::<StopCapture>(br#"{"agent": "a1"}"#).expect("agent").and_then(|s| s.agent).as_deref(), Some("a1"));
        assert!(parse::<StopCapture>(b"{not json").is_err());
        assert!(parse::<StopCapture>(b"[1]").is_err());
    }
}
