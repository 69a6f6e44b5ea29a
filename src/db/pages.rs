//! Keyset pagination: one page of a list, and one page of children for many parents in a
//! single statement (window function), so nested lists cost a constant number of queries.

use std::collections::HashMap;

use sea_orm::{DbErr, Value};

use crate::{
    db::{ColumnName, Db, Decode, Named},
    error::{ApiError, ApiResult},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

/// Encodes a keyset position as an opaque cursor.
pub fn encode_cursor(position: &str) -> String {
    URL_SAFE_NO_PAD.encode(position.as_bytes())
}

/// Decodes an opaque cursor; `None` when it was not produced by [`encode_cursor`].
pub fn decode_cursor(cursor: &str) -> Option<String> {
    URL_SAFE_NO_PAD
        .decode(cursor.as_bytes())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

/// The default page size.
pub const DEFAULT_PAGE_SIZE: u64 = 20;
/// The largest page a client may ask for.
pub const MAX_PAGE_SIZE: u64 = 100;

/// Validated `(first, after)` arguments: `after` is the decoded keyset position (an id).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageArgs {
    /// How many items.
    pub first: u64,
    /// Items strictly beyond this id.
    pub after: Option<String>,
}

impl PageArgs {
    /// Validates client arguments.
    pub fn parse(first: Option<i32>, after: Option<String>) -> ApiResult<PageArgs> {
        let first = match first {
            None => DEFAULT_PAGE_SIZE,
            Some(n) if (0..=MAX_PAGE_SIZE as i32).contains(&n) => n as u64,
            Some(_) => {
                return Err(ApiError::bad_input(
                    "first",
                    format!("must be between 0 and {MAX_PAGE_SIZE}"),
                ));
            }
        };
        let after = match after {
            None => None,
            Some(cursor) => Some(
                decode_cursor(&cursor)
                    .ok_or_else(|| ApiError::bad_input("after", "is not a cursor from this API"))?,
            ),
        };
        Ok(PageArgs { first, after })
    }
}

/// Sort direction by id (ids are time-ordered, so this is creation order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Oldest first.
    Ascending,
    /// Newest first.
    Descending,
}

/// One page of items and whether more follow.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items, at most `first`.
    pub items: Vec<T>,
    /// Whether items follow the last one.
    pub has_next: bool,
}

impl<T> Page<T> {
    /// Builds a page from up to `first + 1` fetched rows.
    pub fn from_overfetch(mut rows: Vec<T>, first: u64) -> Page<T> {
        let has_next = rows.len() as u64 > first;
        rows.truncate(first as usize);
        Page {
            items: rows,
            has_next,
        }
    }
}

/// Describes a child list: `from` is a FROM clause whose item rows are aliased `t`, `parent`
/// the expression naming each row's parent, and `order_key` the indexed expression equal to
/// `t.id` that rows are ordered and paged by.
pub struct ChildList {
    /// FROM clause, e.g. `referrals t`.
    pub from: &'static str,
    /// Parent expression, e.g. `t.partner_id`.
    pub parent: &'static str,
    /// Ordering expression equal to `t.id`, e.g. `t.id` or `a.deal_id`.
    pub order_key: &'static str,
    /// Sort order.
    pub direction: Direction,
    /// A table keeping each parent's number of children, as `(table, parent column)` with the
    /// number in `total`, when there is one: counts read it instead of counting the children.
    pub counted_in: Option<(&'static str, &'static str)>,
}

/// Parents per statement: each parent is one branch of a `UNION ALL`.
const PARENTS_PER_STATEMENT: usize = 100;

/// Loads one page of children for each parent. Each parent is a `UNION ALL` branch walking
/// the `(parent, id)` index with its own `LIMIT`, so the cost is proportional to the page, not
/// to the parent's total number of children; up to 100 parents share one statement.
pub async fn child_pages<M: Decode>(
    db: &Db,
    list: &ChildList,
    parents: &[String],
    args: &PageArgs,
) -> Result<HashMap<String, Page<M>>, DbErr> {
    let mut result: HashMap<String, Vec<(String, M)>> = HashMap::new();
    let (order, cmp) = match list.direction {
        Direction::Ascending => ("ASC", ">"),
        Direction::Descending => ("DESC", "<"),
    };
    for chunk in parents.chunks(PARENTS_PER_STATEMENT) {
        let mut values: Vec<Value> = Vec::new();
        let mut branches = Vec::new();
        for (i, parent) in chunk.iter().enumerate() {
            values.push(parent.clone().into());
            let mut branch = format!(
                "SELECT t.*, {parent_expr} AS tandem_parent, {key} AS tandem_key \
                 FROM {from} WHERE {parent_expr} = {ph}",
                key = list.order_key,
                parent_expr = list.parent,
                from = list.from,
                ph = db.placeholder(values.len()),
            );
            if let Some(after) = &args.after {
                values.push(after.clone().into());
                branch.push_str(&format!(
                    " AND {key} {cmp} {ph}",
                    key = list.order_key,
                    ph = db.placeholder(values.len())
                ));
            }
            values.push(((args.first + 1) as i64).into());
            branch.push_str(&format!(
                " ORDER BY {key} {order} LIMIT {ph}",
                key = list.order_key,
                ph = db.placeholder(values.len())
            ));
            // A lone branch runs as it is: wrapped, SQLite copies the page into a temporary
            // table before reading it back.
            if chunk.len() > 1 {
                branch = format!("SELECT * FROM ({branch}) AS tandem_b{i}");
            }
            branches.push(branch);
        }
        let sql = branches.join(" UNION ALL ");
        let rows: Vec<GroupedRow<M>> = db.rows(sql, values).await?;
        for (parent, (key, model)) in rows {
            result.entry(parent.0).or_default().push((key.0, model));
        }
    }
    // UNION ALL does not promise to keep each branch's order: restore it.
    Ok(result
        .into_iter()
        .map(|(parent, mut rows)| {
            rows.sort_by(|a, b| match list.direction {
                Direction::Ascending => a.0.cmp(&b.0),
                Direction::Descending => b.0.cmp(&a.0),
            });
            let rows = rows.into_iter().map(|(_, model)| model).collect();
            (parent, Page::from_overfetch(rows, args.first))
        })
        .collect())
}

/// Counts children per parent in one statement.
pub async fn child_counts(
    db: &Db,
    list: &ChildList,
    parents: &[String],
) -> Result<HashMap<String, i64>, DbErr> {
    if parents.is_empty() {
        return Ok(HashMap::new());
    }
    let column = list.counted_in.map_or(list.parent, |(_, column)| column);
    let (ins, values) = db.in_list(column, parents, 1);
    let sql = match list.counted_in {
        Some((table, _)) => format!(
            "SELECT {column} AS tandem_parent, total AS tandem_count FROM {table} WHERE {ins}"
        ),
        None => format!(
            "SELECT {column} AS tandem_parent, COUNT(*) AS tandem_count FROM {from} \
             WHERE {ins} GROUP BY {column}",
            from = list.from,
        ),
    };
    let rows: Vec<(Named<String, ParentColumn>, Named<i64, CountColumn>)> =
        db.rows(sql, values).await?;
    let counts = rows.into_iter().map(|(p, c)| (p.0, c.0)).collect();
    Ok(counts)
}

/// A child row of a grouped page: its parent, its sort key, the row.
type GroupedRow<M> = (Named<String, ParentColumn>, (Named<String, KeyColumn>, M));

/// The parent id column of grouped statements.
pub struct ParentColumn;
impl ColumnName for ParentColumn {
    const NAME: &'static str = "tandem_parent";
}

/// The sort key column of grouped pages.
pub struct KeyColumn;
impl ColumnName for KeyColumn {
    const NAME: &'static str = "tandem_key";
}

/// The count column of grouped counts.
pub struct CountColumn;
impl ColumnName for CountColumn {
    const NAME: &'static str = "tandem_count";
}
