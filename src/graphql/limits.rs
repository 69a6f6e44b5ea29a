//! Request limits checked after parsing and before any resolver runs (so before the
//! database is touched): `first` on every list must be between 0 and 100.

use std::sync::Arc;

use async_graphql::{
    ServerError, ServerResult, Variables,
    extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery},
    parser::types::{ExecutableDocument, Selection, SelectionSet},
};
use async_graphql_value::{ConstValue, Value};

use crate::db::pages::MAX_PAGE_SIZE;

/// Rejects documents asking for pages larger than [`MAX_PAGE_SIZE`].
pub struct PageSizeLimit;

impl ExtensionFactory for PageSizeLimit {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(PageSizeLimit)
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
                        let mut err = ServerError::new(
                            format!("first must be between 0 and {MAX_PAGE_SIZE}, got {n}"),
                            Some(value.pos),
                        );
                        let mut ext = async_graphql::ErrorExtensionValues::default();
                        ext.set("code", "BAD_USER_INPUT");
                        ext.set("field", "first");
                        err.extensions = Some(ext);
                        return Err(err);
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

#[async_trait::async_trait]
impl Extension for PageSizeLimit {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        for (_, operation) in doc.operations.iter() {
            check_selection_set(&operation.node.selection_set.node, &doc, variables, 0)?;
        }
        Ok(doc)
    }
}
