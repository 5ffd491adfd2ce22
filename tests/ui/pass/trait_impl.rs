//! Memoized methods of a trait impl, with `#[redis_cached]` imported for them alone: every
//! helper works and nothing warns (the import counts as used).
#![deny(warnings)]

mod service {
use redis_memo::{Cache, redis_cached, redis_cached_impl};

pub trait Repo: Sync {
    fn tenant(&self) -> String;
}

pub trait Directory {
    fn name(&self, id: u64) -> impl std::future::Future<Output = String> + Send;
    fn count(&self) -> impl std::future::Future<Output = u64> + Send;
}

pub struct Service<R> {
    pub cache: Cache,
    pub repo: R,
}

#[redis_cached_impl]
impl<R: Repo> Directory for Service<R> {
    #[redis_cached(ttl = "1m", key = "name:<id>", cache = self.cache)]
    async fn name(&self, id: u64) -> String {
        format!("{}{id}", self.repo.tenant())
    }

    #[redis_cached(ttl = "1m", key = "count", cache = self.cache)]
    async fn count(&self) -> u64 {
        1
    }
}

/// A trait with an associated type in a memoized method's parameters.
pub trait Keyed {
    type Id: redis_memo::KeyPart + Sync;
    fn label(&self, id: Self::Id) -> impl std::future::Future<Output = String> + Send;
}

#[redis_cached_impl]
impl<R: Repo> Keyed for Service<R> {
    type Id = u32;

    #[redis_cached(ttl = "1m", key = "label:<id>", cache = self.cache)]
    async fn label(&self, id: Self::Id) -> String {
        id.to_string()
    }
}

}

use service::{Directory, Keyed, Repo, Service};

// From another module: the helpers of a trait's methods are `pub`.
pub async fn uses<R: Repo>(service: &Service<R>) -> Result<(), redis_memo::CacheError> {
    let _: String = service.name(1).await;
    let _: String = Service::<R>::name_cache_key(1);
    let _: bool = service.invalidate_name(1).await?;
    let _: u64 = service.invalidate_name_many([1, 2]).await?;
    let _: bool = service.invalidate_count().await?;
    let _: bool = service.invalidate_label(7).await?;
    let _: String = service.label(7).await;
    Ok(())
}

fn main() {}
