//! Request limits checked after parsing and before any resolver runs (so before the
//! database is touched): `first` on every list must be between 0 and 100.
//!
//! The check wraps the schema as an [`Executor`] (HTTP and websocket requests both go through
//! it) rather than being a schema extension: any extension makes async-graphql route every
//! field through the extension chain, a measurable cost on pages of hundreds of fields.
//!
//! The wrapper also keeps the most recently parsed documents: clients send the same few
//! queries over and over (a dashboard polls one), and parsing was ~8 % of such a request.
//! A document depends on its text alone; the page check, validation and execution still run
//! on every request with its own variables.
//!
//! Each request (an HTTP request, or one operation on a websocket) gets its own loaders here,
//! and its execution is [`Driven`] so that their batches run (see [`super::batch`]).

use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex},
};

use async_graphql::{
    Data, Executor, Pos, Request, Response, ServerError, Variables,
    futures_util::stream::{self, BoxStream, StreamExt},
    parser::types::{ExecutableDocument, Selection, SelectionSet},
};
use async_graphql_value::{ConstValue, Value};
use lru::LruCache;

use super::{
    RequestAuth, TandemSchema,
    batch::{Batches, Driven},
    loaders::Loaders,
};

use crate::db::{Db, pages::MAX_PAGE_SIZE};

/// How many parsed documents are kept.
const CACHED_DOCUMENTS: usize = 256;
/// Longer query texts are parsed every time, so the cache stays within a few MiB (a parsed
/// document takes several times the memory of its text) whatever clients send.
const MAX_CACHED_QUERY_BYTES: usize = 4 * 1024;

/// The schema behind the page-size check: documents asking for pages larger than
/// [`MAX_PAGE_SIZE`] are answered with an error and never executed.
#[derive(Clone)]
pub struct LimitedSchema {
    schema: TandemSchema,
    db: Db,
    documents: Arc<Mutex<LruCache<String, ExecutableDocument>>>,
}

impl LimitedSchema {
    /// Wraps a schema whose loaders read `db`.
    pub fn new(schema: TandemSchema, db: Db) -> LimitedSchema {
        LimitedSchema {
            schema,
            db,
            documents: Arc::new(Mutex::new(LruCache::new(
                NonZeroUsize::new(CACHED_DOCUMENTS).expect("non-zero"),
            ))),
        }
    }

    /// The parsed document of a query text: from the cache, or parsed (and kept when it
    /// parses and is small enough).
    fn parse(&self, query: &str) -> Option<ExecutableDocument> {
        let cacheable = query.len() <= MAX_CACHED_QUERY_BYTES;
        if cacheable
            && let Some(doc) = self
                .documents
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(query)
        {
            return Some(doc.clone());
        }
        let doc = async_graphql::parser::parse_query(query).ok()?;
        if cacheable {
            self.documents
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .put(query.to_string(), doc.clone());
        }
        Some(doc)
    }

    /// Parses the request and checks its pages: `Err` holds the error. A document that does
    /// not parse is left to the schema, which reports the syntax error.
    fn check(&self, request: &mut Request) -> Result<(), ServerError> {
        let Some(doc) = self.parse(&request.query) else {
            return Ok(());
        };
        for (_, operation) in doc.operations.iter() {
            let roots = root_fields(&operation.node.selection_set.node, &doc, 0);
            if roots > super::MAX_ROOT_FIELDS {
                return Err(bad_input(
                    format!(
                        "an operation may select at most {} root fields (aliases included), this one selects {roots}",
                        super::MAX_ROOT_FIELDS
                    ),
                    operation.pos,
                    None,
                ));
            }
            check_selection_set(
                &operation.node.selection_set.node,
                &doc,
                &request.variables,
                0,
            )?;
        }
        request.set_parsed_query(doc);
        Ok(())
    }

    /// The request with fresh loaders, and the batches its execution must drive.
    fn with_loaders(&self, request: Request) -> (Request, Batches) {
        let batches = Batches::default();
        let request = request.data(Loaders::new(&self.db, &batches));
        (request, batches)
    }
}

impl Executor for LimitedSchema {
    async fn execute(&self, mut request: Request) -> Response {
        match self.check(&mut request) {
            Ok(()) => {
                let (request, batches) = self.with_loaders(request);
                Driven::new(self.schema.execute(request), batches).await
            }
            Err(err) => Response::from_errors(vec![err]),
        }
    }

    fn execute_stream(
        &self,
        mut request: Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        match self.check(&mut request) {
            Ok(()) => {
                if session_data.is_some() {
                    // An operation on a websocket: authenticated afresh, with the socket's key.
                    request = request.data(RequestAuth::from_socket());
                }
                let (request, batches) = self.with_loaders(request);
                let stream = self
                    .schema
                    .execute_stream_with_session_data(request, session_data.unwrap_or_default());
                Driven::new(stream, batches).boxed()
            }
            Err(err) => stream::once(async move { Response::from_errors(vec![err]) }).boxed(),
        }
    }
}

fn first_value(value: &Value, variables: &Variables) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::Variable(name) => match variables.get(name) {
            Some(ConstValue::Number(n)) => n.as_i64(),
            _ => None,
        },
        _ => None,
    }
}

/// A `BAD_USER_INPUT` error at `pos`, naming `field` when given.
fn bad_input(message: String, pos: Pos, field: Option<&str>) -> ServerError {
    let mut err = ServerError::new(message, Some(pos));
    let mut ext = async_graphql::ErrorExtensionValues::default();
    ext.set("code", "BAD_USER_INPUT");
    if let Some(field) = field {
        ext.set("field", field);
    }
    err.extensions = Some(ext);
    err
}

/// The root fields an operation selects, through fragments (aliases count one each).
fn root_fields(set: &SelectionSet, doc: &ExecutableDocument, depth: usize) -> usize {
    if depth > 16 {
        return 0; // cyclic fragments are rejected by validation anyway
    }
    set.items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(_) => 1,
            Selection::InlineFragment(fragment) => {
                root_fields(&fragment.node.selection_set.node, doc, depth + 1)
            }
            Selection::FragmentSpread(spread) => doc
                .fragments
                .get(&spread.node.fragment_name.node)
                .map(|f| root_fields(&f.node.selection_set.node, doc, depth + 1))
                .unwrap_or(0),
        })
        .sum()
}

fn check_selection_set(
    set: &SelectionSet,
    doc: &ExecutableDocument,
    variables: &Variables,
    depth: usize,
) -> Result<(), ServerError> {
    if depth > 64 {
        return Ok(()); // the depth limit rejects such documents anyway
    }
    for item in &set.items {
        match &item.node {
            Selection::Field(field) => {
                for (name, value) in &field.node.arguments {
                    if name.node.as_str() == "first"
                        && let Some(n) = first_value(&value.node, variables)
                        && !(0..=MAX_PAGE_SIZE as i64).contains(&n)
                    {
                        return Err(bad_input(
                            format!("first must be between 0 and {MAX_PAGE_SIZE}, got {n}"),
                            value.pos,
                            Some("first"),
                        ));
                    }
                }
                check_selection_set(&field.node.selection_set.node, doc, variables, depth + 1)?;
            }
            Selection::InlineFragment(fragment) => {
                check_selection_set(&fragment.node.selection_set.node, doc, variables, depth + 1)?;
            }
            Selection::FragmentSpread(spread) => {
                if let Some(fragment) = doc.fragments.get(&spread.node.fragment_name.node) {
                    check_selection_set(
                        &fragment.node.selection_set.node,
                        doc,
                        variables,
                        depth + 1,
                    )?;
                }
            }
        }
    }
    Ok(())
}
