//! Request-scoped batching of loader calls, driven by the request itself.
//!
//! async-graphql resolves sibling fields and the items of a list concurrently inside the
//! request's one task: every resolver that reaches a loader during one poll of the request
//! has registered its keys before that poll returns. [`BatchLoader`] therefore gathers keys
//! until the end of the poll and [`Driven`] (which wraps the request's execution) then loads
//! each loader's keys with one call, and polls the execution again as soon as a batch is in.
//!
//! async-graphql's own `DataLoader` gathers keys for a wall-clock window instead (a timer, then
//! a spawned task): every level of a query waited out that window even when all its keys were
//! in long before, which left the CPU idle under load (the partner dashboard spent two windows
//! per request asleep), and a window shorter than a slow poll (a debug build resolving a page
//! of 50) split a level into several statements. Here the batches follow the query's levels
//! exactly, whatever the build or the load: one statement per loader and level.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    hash::Hash,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
};

use async_graphql::dataloader::Loader;
use futures_util::{
    Stream,
    future::BoxFuture,
    stream::{FuturesUnordered, StreamExt},
};
use tokio::sync::oneshot;

/// Most keys loaded by one call of a loader (an `IN` list); more are loaded in several calls.
pub const MAX_BATCH_KEYS: usize = 1000;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The batches waiting to be loaded in one request, shared by its loaders and its [`Driven`]
/// execution.
#[derive(Clone, Default)]
pub struct Batches(Arc<Mutex<Vec<BoxFuture<'static, ()>>>>);

impl Batches {
    fn push(&self, batch: BoxFuture<'static, ()>) {
        lock(&self.0).push(batch);
    }

    fn take(&self) -> Vec<BoxFuture<'static, ()>> {
        std::mem::take(&mut *lock(&self.0))
    }

    fn is_empty(&self) -> bool {
        lock(&self.0).is_empty()
    }
}

/// Drives an execution (a future or a stream) and the loader batches it queues: after each
/// poll of the execution the queued batches are started and polled; when one completes, the
/// execution is polled again at once.
pub struct Driven<F> {
    inner: Pin<Box<F>>,
    batches: Batches,
    running: FuturesUnordered<BoxFuture<'static, ()>>,
}

impl<F> Driven<F> {
    /// `inner`, whose loaders queue their batches on `batches`.
    pub fn new(inner: F, batches: Batches) -> Driven<F> {
        Driven {
            inner: Box::pin(inner),
            batches,
            running: FuturesUnordered::new(),
        }
    }

    /// Polls the execution with `poll_inner` (a future's `poll`, a stream's `poll_next`) and
    /// runs the batches it queued, again as long as a batch completes.
    fn drive<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut poll_inner: impl FnMut(Pin<&mut F>, &mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        loop {
            if let Poll::Ready(out) = poll_inner(self.inner.as_mut(), cx) {
                return Poll::Ready(out);
            }
            if !self.run_batches(cx) {
                return Poll::Pending;
            }
        }
    }

    /// Starts the queued batches and polls the running ones: whether any completed (its
    /// waiters are then ready to go on).
    fn run_batches(&mut self, cx: &mut Context<'_>) -> bool {
        let mut completed = false;
        loop {
            self.running.extend(self.batches.take());
            while let Poll::Ready(Some(())) = self.running.poll_next_unpin(cx) {
                completed = true;
            }
            // Batches queued meanwhile (by a loader that uses a loader) start too.
            if self.batches.is_empty() {
                return completed;
            }
        }
    }
}

impl<F: Future> Future for Driven<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.get_mut().drive(cx, |inner, cx| inner.poll(cx))
    }
}

impl<S: Stream> Stream for Driven<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.get_mut().drive(cx, |inner, cx| inner.poll_next(cx))
    }
}

/// What a loader key must be (as async-graphql's [`Loader`] asks).
pub trait Key: Send + Sync + Hash + Eq + Clone + 'static {}

impl<K: Send + Sync + Hash + Eq + Clone + 'static> Key for K {}

type BatchResult<K, L> = Result<Arc<HashMap<K, <L as Loader<K>>::Value>>, <L as Loader<K>>::Error>;

struct Pending<K: Key, L: Loader<K>> {
    keys: HashSet<K>,
    waiters: Vec<oneshot::Sender<BatchResult<K, L>>>,
}

struct Shared<K: Key, L: Loader<K>> {
    loader: L,
    pending: Mutex<Pending<K, L>>,
}

/// A loader whose calls in one poll of the request are answered by one batch (at most
/// [`MAX_BATCH_KEYS`] keys per call of the loader). Nothing is cached: each request has its
/// own loaders.
pub struct BatchLoader<K: Key, L: Loader<K>> {
    shared: Arc<Shared<K, L>>,
    batches: Batches,
}

impl<K, L> BatchLoader<K, L>
where
    K: Key,
    L: Loader<K>,
{
    /// `loader`, batched on the request's `batches`.
    pub fn new(loader: L, batches: &Batches) -> BatchLoader<K, L> {
        BatchLoader {
            shared: Arc::new(Shared {
                loader,
                pending: Mutex::new(Pending {
                    keys: HashSet::new(),
                    waiters: Vec::new(),
                }),
            }),
            batches: batches.clone(),
        }
    }

    /// The value of one key, if the loader found it.
    pub async fn load_one(&self, key: K) -> Result<Option<L::Value>, L::Error> {
        let found = self.batch_of(std::iter::once(key.clone())).await?;
        Ok(found.get(&key).cloned())
    }

    /// The values of the keys the loader found.
    pub async fn load_many(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<HashMap<K, L::Value>, L::Error> {
        let keys: Vec<K> = keys.into_iter().collect();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let found = self.batch_of(keys.iter().cloned()).await?;
        Ok(keys
            .into_iter()
            .filter_map(|key| found.get(&key).cloned().map(|value| (key, value)))
            .collect())
    }

    /// Adds `keys` to the batch being gathered (queuing it if it is new) and waits for it.
    async fn batch_of(&self, keys: impl Iterator<Item = K>) -> BatchResult<K, L> {
        let receiver = {
            let mut pending = lock(&self.shared.pending);
            pending.keys.extend(keys);
            let (sender, receiver) = oneshot::channel();
            pending.waiters.push(sender);
            if pending.waiters.len() == 1 {
                self.batches.push(Box::pin(load_batch(self.shared.clone())));
            }
            receiver
        };
        receiver
            .await
            .expect("a queued batch answers its waiters unless the request is dropped")
    }
}

/// Loads the keys gathered so far (taken when the batch first runs, after the poll that
/// gathered them) and answers every waiter.
async fn load_batch<K, L>(shared: Arc<Shared<K, L>>)
where
    K: Key,
    L: Loader<K>,
{
    let (keys, waiters) = {
        let mut pending = lock(&shared.pending);
        let keys: Vec<K> = pending.keys.drain().collect();
        (keys, std::mem::take(&mut pending.waiters))
    };
    let mut found = HashMap::with_capacity(keys.len());
    let mut result = Ok(());
    for chunk in keys.chunks(MAX_BATCH_KEYS) {
        match shared.loader.load(chunk).await {
            Ok(values) => found.extend(values),
            Err(err) => {
                result = Err(err);
                break;
            }
        }
    }
    let result = result.map(|()| Arc::new(found));
    for waiter in waiters {
        // A waiter that went away (its field was dropped) needs no answer.
        let _ = waiter.send(result.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The key that fails its batch.
    const UNLUCKY: u32 = 13_013;

    /// Doubles its keys; counts its calls and the keys of the largest.
    #[derive(Default)]
    struct Doubler {
        calls: AtomicUsize,
        largest: AtomicUsize,
    }

    /// The loader under test, sharing its counts with the test.
    struct Counted(Arc<Doubler>);

    impl Loader<u32> for Counted {
        type Value = u32;
        type Error = String;

        async fn load(&self, keys: &[u32]) -> Result<HashMap<u32, u32>, String> {
            self.0.calls.fetch_add(1, Ordering::SeqCst);
            self.0.largest.fetch_max(keys.len(), Ordering::SeqCst);
            // A real loader awaits its statement: yield once, as a network round trip would.
            tokio::task::yield_now().await;
            if keys.contains(&UNLUCKY) {
                return Err("unlucky".to_string());
            }
            Ok(keys.iter().map(|k| (*k, k * 2)).collect())
        }
    }

    fn loader() -> (Arc<Doubler>, BatchLoader<u32, Counted>, Batches) {
        let batches = Batches::default();
        let counts = Arc::new(Doubler::default());
        (
            counts.clone(),
            BatchLoader::new(Counted(counts), &batches),
            batches,
        )
    }

    #[tokio::test]
    async fn the_calls_of_one_poll_share_one_batch() {
        let (counts, loader, batches) = loader();
        let loader = &loader;
        let work = futures_util::future::join_all((0..50u32).map(|i| async move {
            let one = loader.load_one(i).await.unwrap();
            // The next level asks again, after the first batch is in.
            let many = loader.load_many([i + 100, i + 200]).await.unwrap();
            (one, many)
        }));
        let results = Driven::new(work, batches).await;
        for (i, (one, many)) in results.into_iter().enumerate() {
            let i = i as u32;
            assert_eq!(one, Some(i * 2));
            assert_eq!(many.len(), 2);
            assert_eq!(many[&(i + 200)], (i + 200) * 2);
        }
        // One batch per level, each with every key of the level.
        assert_eq!(counts.calls.load(Ordering::SeqCst), 2);
        assert_eq!(counts.largest.load(Ordering::SeqCst), 100);
    }

    #[tokio::test]
    async fn large_batches_are_loaded_in_bounded_calls() {
        let (counts, loader, batches) = loader();
        let keys: Vec<u32> = (1000..1000 + 2 * MAX_BATCH_KEYS as u32 + 1).collect();
        let found = Driven::new(loader.load_many(keys.clone()), batches)
            .await
            .unwrap();
        assert_eq!(found.len(), keys.len());
        assert_eq!(counts.calls.load(Ordering::SeqCst), 3);
        assert_eq!(counts.largest.load(Ordering::SeqCst), MAX_BATCH_KEYS);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_callers_and_not_the_next() {
        let (_, loader, batches) = loader();
        let loader = &loader;
        let work = async move {
            let (a, b) = futures_util::join!(loader.load_one(UNLUCKY), loader.load_one(14));
            let after = loader.load_one(15).await;
            (a, b, after)
        };
        let (a, b, after) = Driven::new(work, batches).await;
        assert_eq!(a.unwrap_err(), "unlucky");
        assert_eq!(b.unwrap_err(), "unlucky");
        assert_eq!(after.unwrap(), Some(30));
    }

    #[tokio::test]
    async fn missing_keys_are_absent_and_nothing_waits_without_keys() {
        struct Sparse;
        impl Loader<u32> for Sparse {
            type Value = &'static str;
            type Error = String;
            async fn load(&self, _: &[u32]) -> Result<HashMap<u32, &'static str>, String> {
                Ok(HashMap::from([(1, "one")]))
            }
        }
        let batches = Batches::default();
        let loader = BatchLoader::new(Sparse, &batches);
        let work = async {
            (
                loader.load_one(2).await.unwrap(),
                loader.load_many([1, 2]).await.unwrap(),
                loader.load_many(Vec::new()).await.unwrap(),
            )
        };
        let (two, many, none) = Driven::new(work, batches).await;
        assert_eq!(two, None);
        assert_eq!(many, HashMap::from([(1, "one")]));
        assert!(none.is_empty());
    }

    #[tokio::test]
    async fn a_driven_stream_runs_the_batches_of_each_item() {
        let (counts, loader, batches) = loader();
        let loader = Arc::new(loader);
        let items = futures_util::stream::iter(0..3u32).then(move |i| {
            let loader = loader.clone();
            async move { loader.load_one(i).await.unwrap() }
        });
        let got: Vec<_> = Driven::new(items, batches).collect().await;
        assert_eq!(got, vec![Some(0), Some(2), Some(4)]);
        assert_eq!(counts.calls.load(Ordering::SeqCst), 3);
    }
}
