//! Scoped worker threads: the one fork-join loop that evaluation, loss, greedy selection,
//! training and the parallel forward pass share.

use anyhow::Result;

/// `f(i, &items[i])` for every item, each in a scoped thread of its own, results in item order.
/// A worker that panics becomes an error naming `what` ("a loss worker panicked"), never a panic
/// of the caller.
pub fn scoped_map<T, R, F>(what: &str, items: &[T], f: F) -> Vec<Result<R>>
where
    T: Sync,
    R: Send,
    F: Fn(usize, &T) -> Result<R> + Sync,
{
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let f = &f;
                scope.spawn(move || f(i, item))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a {what} worker panicked")))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_in_order_and_a_panic_is_an_error() {
        let out = scoped_map("test", &[3, 1, 2], |i, x| Ok(i * 10 + x));
        let out: Vec<usize> = out.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(out, [3, 11, 22]);
        let out = scoped_map("test", &[0, 1], |_, &x| {
            if x == 1 {
                panic!("boom");
            }
            Ok(x)
        });
        assert_eq!(out[0].as_ref().unwrap(), &0);
        assert_eq!(
            out[1].as_ref().unwrap_err().to_string(),
            "a test worker panicked"
        );
    }
}
