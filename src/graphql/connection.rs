//! Relay connections: `{edges {cursor node}, pageInfo {hasNextPage endCursor}, totalCount}`.
//! `totalCount` is computed only when asked for.

use std::sync::Arc;

use async_graphql::{Context, Result, SimpleObject};
use futures_util::future::BoxFuture;
use sea_orm::{
    ColumnTrait, EntityTrait, FromQueryResult, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Select,
};

use crate::{
    db::pages::encode_cursor,
    db::{
        Db,
        pages::{Direction, Page, PageArgs},
    },
    error::ApiError,
    graphql::loaders::{ChildCountKey, Loaders},
};

/// Relay page information.
#[derive(Debug, Clone, SimpleObject)]
pub struct PageInfo {
    /// Whether items follow this page.
    pub has_next_page: bool,
    /// Whether this page was requested after a cursor.
    pub has_previous_page: bool,
    /// Cursor of the first edge.
    pub start_cursor: Option<String>,
    /// Cursor of the last edge: pass it as `after` for the next page.
    pub end_cursor: Option<String>,
}

type CountFn = Arc<dyn Fn(Db) -> BoxFuture<'static, Result<u64, sea_orm::DbErr>> + Send + Sync>;

/// How to count the whole list, run only when `totalCount` is selected.
#[derive(Clone)]
pub enum TotalCount {
    /// Already known.
    Known(u64),
    /// A count query.
    Query(CountFn),
    /// A child list counted for many parents at once through a loader.
    Child(ChildCountKey),
}

impl TotalCount {
    /// A count query built from a cloned sea-orm select.
    pub fn query<F, Fut>(f: F) -> TotalCount
    where
        F: Fn(Db) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<u64, sea_orm::DbErr>> + Send + 'static,
    {
        TotalCount::Query(Arc::new(move |db| Box::pin(f(db))))
    }

    /// Resolves the count.
    pub async fn resolve(&self, ctx: &Context<'_>) -> Result<i64> {
        match self {
            TotalCount::Known(n) => Ok(*n as i64),
            TotalCount::Query(f) => {
                let db = ctx.data_unchecked::<Db>().clone();
                let n = f(db).await.map_err(ApiError::from)?;
                Ok(n as i64)
            }
            TotalCount::Child(key) => {
                let loaders = ctx.data_unchecked::<Loaders>();
                Ok(loaders
                    .child_counts
                    .load_one(key.clone())
                    .await?
                    .unwrap_or(0))
            }
        }
    }
}

/// Optional filters of list resolvers: `query.eq_if(Column, filter.value)` adds
/// `column = value` when the client gave one.
pub trait EqIf: QueryFilter + Sized {
    /// Filters on `column = value` when `value` is given.
    fn eq_if<V: Into<sea_orm::Value>>(self, column: impl ColumnTrait, value: Option<V>) -> Self {
        match value {
            Some(value) => self.filter(column.eq(value)),
            None => self,
        }
    }

    /// Filters on any of `columns` containing `text` (case-insensitive, `%` and `_` taken
    /// literally) when `text` is given and not blank. `BAD_USER_INPUT` on `field` beyond 200
    /// characters.
    fn search_if<C: ColumnTrait>(
        self,
        columns: &[C],
        text: Option<&str>,
        field: &str,
    ) -> Result<Self, ApiError> {
        let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(self);
        };
        if text.chars().count() > 200 {
            return Err(ApiError::bad_input(field, "at most 200 characters"));
        }
        let mut escaped = String::with_capacity(text.len() + 2);
        for c in text.to_lowercase().chars() {
            if matches!(c, '%' | '_' | '\\') {
                escaped.push('\\');
            }
            escaped.push(c);
        }
        use sea_orm::sea_query::ExprTrait;
        let pattern = format!("%{escaped}%");
        let mut any = sea_orm::Condition::any();
        for column in columns {
            any = any.add(
                sea_orm::sea_query::Expr::expr(sea_orm::sea_query::Func::lower(
                    sea_orm::sea_query::Expr::col(*column),
                ))
                .like(sea_orm::sea_query::LikeExpr::new(pattern.clone()).escape('\\')),
            );
        }
        Ok(self.filter(any))
    }
}

impl<E: EntityTrait> EqIf for Select<E> {}

/// The row of `query` shown as `node`, or `NOT_FOUND` naming `what`: the body of a
/// resolver of one item by id (`Some` always: the field is nullable for GraphQL's error
/// semantics, not because absence is an answer).
pub async fn one_or_not_found<E, N>(
    db: &Db,
    query: Select<E>,
    what: &'static str,
    node: impl FnOnce(E::Model) -> N,
) -> Result<Option<N>>
where
    E: EntityTrait,
    E::Model: crate::db::Decode,
{
    let row = db.select_one(query).await.map_err(ApiError::from)?;
    Ok(Some(row.map(node).ok_or(ApiError::NotFound(what))?))
}

/// The (single) primary-key column of an entity.
pub fn primary_column<E: EntityTrait>() -> E::Column {
    use sea_orm::{Iterable, PrimaryKeyToColumn};
    E::PrimaryKey::iter()
        .next()
        .expect("every entity has a primary key")
        .into_column()
}

/// One page of a top-level list paged by its time-ordered string id (`args.after` is an id),
/// and how to count the whole filtered list for `totalCount` (run only when it is asked for).
pub async fn id_page<E>(
    db: &Db,
    query: Select<E>,
    id: E::Column,
    direction: Direction,
    args: &PageArgs,
) -> Result<(Page<E::Model>, TotalCount), ApiError>
where
    E: EntityTrait,
    E::Model: FromQueryResult + Send + Sync,
{
    let count_query = query.clone();
    let total = TotalCount::query(move |db| {
        let q = count_query.clone();
        async move { q.count(db.reads()).await }
    });
    let mut query = query;
    if let Some(after) = &args.after {
        query = query.filter(match direction {
            Direction::Ascending => id.gt(after.as_str()),
            Direction::Descending => id.lt(after.as_str()),
        });
    }
    let query = match direction {
        Direction::Ascending => query.order_by_asc(id),
        Direction::Descending => query.order_by_desc(id),
    };
    let rows = query.limit(args.first + 1).all(db.reads()).await?;
    Ok((Page::from_overfetch(rows, args.first), total))
}

/// Builds `(cursor, node)` pairs and page info from a page.
pub fn edges_of<M, N>(
    page: Page<M>,
    had_cursor: bool,
    id_of: impl Fn(&M) -> String,
    node: impl Fn(M) -> N,
) -> (Vec<(String, N)>, PageInfo) {
    let edges: Vec<(String, N)> = page
        .items
        .into_iter()
        .map(|m| (encode_cursor(&id_of(&m)), node(m)))
        .collect();
    let info = PageInfo {
        has_next_page: page.has_next,
        has_previous_page: had_cursor,
        start_cursor: edges.first().map(|(c, _)| c.clone()),
        end_cursor: edges.last().map(|(c, _)| c.clone()),
    };
    (edges, info)
}

/// Declares `<Node>Connection` and `<Node>Edge` types for a node type. Edges and nodes are
/// resolved through [`Inline`](crate::graphql::inline::Inline): they repeat once per item.
macro_rules! connection {
    ($conn:ident, $edge:ident, $node:ty, $what:literal) => {
        #[doc = concat!("A page of ", $what, ".")]
        pub struct $conn {
            pub edges: Vec<$crate::graphql::inline::Inline<$edge>>,
            pub page_info: $crate::graphql::connection::PageInfo,
            pub total: $crate::graphql::connection::TotalCount,
        }

        #[doc = concat!("One of ", $what, " with its cursor.")]
        #[derive(async_graphql::SimpleObject)]
        pub struct $edge {
            /// Opaque position of this edge: pass it as `after`.
            pub cursor: String,
            /// The item.
            pub node: $crate::graphql::inline::Inline<$node>,
        }

        impl $crate::graphql::inline::PlainFields for $edge {
            fn plain_scalar(&self, name: &str) -> Option<async_graphql::Value> {
                (name == "cursor").then(|| async_graphql::Value::String(self.cursor.clone()))
            }

            fn plain_object(
                &self,
                name: &str,
            ) -> Option<Option<&dyn $crate::graphql::inline::PlainObject>> {
                (name == "node").then_some(Some(&self.node))
            }
        }

        #[doc = concat!("A page of ", $what, ".")]
        #[async_graphql::Object]
        impl $conn {
            /// The items of this page with their cursors.
            async fn edges(&self) -> $crate::graphql::inline::InlineList<'_, $edge> {
                $crate::graphql::inline::InlineList(&self.edges)
            }

            /// Where this page stands.
            async fn page_info(&self) -> &$crate::graphql::connection::PageInfo {
                &self.page_info
            }

            /// Number of items in the whole list (all pages).
            async fn total_count(
                &self,
                ctx: &async_graphql::Context<'_>,
            ) -> async_graphql::Result<i64> {
                self.total.resolve(ctx).await
            }
        }

        impl $conn {
            /// The page a client asked for (`first`, `after`) of `query` in id order
            /// (`direction`), each row shown as `node`: the body of a list resolver.
            pub async fn page<E>(
                ctx: &async_graphql::Context<'_>,
                query: sea_orm::Select<E>,
                direction: $crate::db::pages::Direction,
                (first, after): (Option<i32>, Option<String>),
                node: impl Fn(E::Model) -> $node,
            ) -> async_graphql::Result<$conn>
            where
                E: sea_orm::EntityTrait,
                E::Model: sea_orm::FromQueryResult + $crate::db::entities::Keyed + Send + Sync,
            {
                let args = $crate::db::pages::PageArgs::parse(first, after)?;
                let db = ctx.data_unchecked::<$crate::db::Db>();
                Ok($conn::by_id(db, query, direction, &args, node).await?)
            }

            /// One page of `query` in id order (`direction`), each row shown as `node`.
            pub async fn by_id<E>(
                db: &$crate::db::Db,
                query: sea_orm::Select<E>,
                direction: $crate::db::pages::Direction,
                args: &$crate::db::pages::PageArgs,
                node: impl Fn(E::Model) -> $node,
            ) -> Result<$conn, $crate::error::ApiError>
            where
                E: sea_orm::EntityTrait,
                E::Model: sea_orm::FromQueryResult + $crate::db::entities::Keyed + Send + Sync,
            {
                let (page, total) = $crate::graphql::connection::id_page(
                    db,
                    query,
                    $crate::graphql::connection::primary_column::<E>(),
                    direction,
                    args,
                )
                .await?;
                Ok($conn::build(
                    page,
                    args.after.is_some(),
                    $crate::db::entities::Keyed::key,
                    node,
                    total,
                ))
            }

            /// Builds the connection from a page.
            pub fn build<M>(
                page: $crate::db::pages::Page<M>,
                had_cursor: bool,
                id_of: impl Fn(&M) -> String,
                node: impl Fn(M) -> $node,
                total: $crate::graphql::connection::TotalCount,
            ) -> $conn {
                let (edges, page_info) =
                    $crate::graphql::connection::edges_of(page, had_cursor, id_of, node);
                $conn {
                    edges: edges
                        .into_iter()
                        .map(|(cursor, node)| {
                            $crate::graphql::inline::Inline($edge {
                                cursor,
                                node: $crate::graphql::inline::Inline(node),
                            })
                        })
                        .collect(),
                    page_info,
                    total,
                }
            }
        }
    };
}

pub(crate) use connection;
