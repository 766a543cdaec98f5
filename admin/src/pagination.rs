//! Page sizes of the list routes. Every list takes `limit` and a cursor
//! `after`, and answers with `next`: the cursor of the following page, or
//! `null` on the last page.

use crate::error::ApiError;

/// Items per page when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 100;

/// The largest `limit` accepted. Part of the API contract (it is in the
/// OpenAPI document), so it is fixed rather than configured.
pub const MAX_LIMIT: u32 = 1000;

/// The largest numeric `after` cursor accepted (2^53 - 1): connection ids
/// and offsets stay below it, every JSON number up to it is exact, and the
/// OpenAPI document states it as the parameter's `maximum`.
pub const MAX_CURSOR: u64 = (1 << 53) - 1;

/// Checks a numeric `after` parameter: at most [`MAX_CURSOR`].
pub(crate) fn checked_after(after: Option<u64>) -> Result<Option<u64>, ApiError> {
    match after {
        Some(after) if after > MAX_CURSOR => Err(ApiError::bad_parameter(format!(
            "after must be 0 to {MAX_CURSOR}, got {after}"
        ))),
        after => Ok(after),
    }
}

/// Checks a `limit` parameter: absent means [`DEFAULT_LIMIT`]; otherwise it
/// must be 1 to [`MAX_LIMIT`].
pub(crate) fn checked_limit(limit: Option<u32>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT as usize),
        Some(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit as usize),
        Some(limit) => Err(ApiError::bad_parameter(format!(
            "limit must be 1 to {MAX_LIMIT}, got {limit}"
        ))),
    }
}

/// Splits one extra item fetched past `limit` off `items`: if it was there,
/// another page follows, and its cursor is computed from the last item kept.
pub(crate) fn split_page<T, C>(
    mut items: Vec<T>,
    limit: usize,
    cursor: impl FnOnce(&T) -> C,
) -> (Vec<T>, Option<C>) {
    if items.len() > limit {
        items.truncate(limit);
        let next = items.last().map(cursor);
        (items, next)
    } else {
        (items, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_defaults_and_bounds() {
        assert_eq!(checked_limit(None).unwrap(), 100);
        assert_eq!(checked_limit(Some(1)).unwrap(), 1);
        assert_eq!(checked_limit(Some(1000)).unwrap(), 1000);
        assert!(checked_limit(Some(0)).is_err());
        assert!(checked_limit(Some(1001)).is_err());
    }

    #[test]
    fn cursors_are_bounded_by_max_cursor() {
        assert_eq!(checked_after(None).unwrap(), None);
        assert_eq!(checked_after(Some(MAX_CURSOR)).unwrap(), Some(MAX_CURSOR));
        assert!(checked_after(Some(MAX_CURSOR + 1)).is_err());
    }

    #[test]
    fn a_page_has_a_next_cursor_only_when_more_follow() {
        assert_eq!(split_page(vec![1, 2, 3], 2, |n| *n), (vec![1, 2], Some(2)));
        assert_eq!(split_page(vec![1, 2], 2, |n| *n), (vec![1, 2], None));
        assert_eq!(split_page(Vec::<u8>::new(), 2, |n| *n), (vec![], None));
    }
}
