//! Generic shapes the wrapper and its helpers must accept: `?Sized` and const parameters,
//! lifetimes in bounds, and receiver-less associated functions of generic impls.

use redis_memo::{Cache, CacheValue, KeyPart, redis_cached};
use std::marker::PhantomData;

#[redis_cached(ttl = "1m", key = "get:<id>")]
async fn get<Q: KeyPart + ?Sized + Sync, V: CacheValue + Default>(id: &Q) -> V {
    let _ = id;
    V::default()
}

#[redis_cached(ttl = "1m", key = "sized:<id>")]
async fn sized<const N: usize>(id: u64) -> u64 {
    id + N as u64
}

pub struct Db;

#[redis_cached(ttl = "1m", key = "bounded:<id>")]
async fn bounded<'a, K: KeyPart + Sync + 'a>(id: K, #[cache(skip)] db: &'a Db) -> u8 {
    let _ = (&id, db);
    1
}

pub struct Repo<B>(PhantomData<B>);

impl<B: Send + Sync + 'static> Repo<B> {
    #[redis_cached(ttl = "1m", key = "count:<id>")]
    pub async fn count(id: u64) -> u64 {
        id
    }
}

#[redis_cached(ttl = "1m", key = "from:<id>", cache = D::cache())]
async fn from_injected<D: Injected>(id: u64, #[cache(skip)] dep: &D) -> u64 {
    let _ = dep;
    id
}

pub trait Injected: Sync {
    fn cache() -> &'static Cache;
}

async fn helpers<D: Injected>() {
    let _: u64 = get::<str, u64>("k").await;
    let _: String = get_cache_key::<str>("k");
    let _ = (sized::<3>(1).await, sized_cache_key(1));
    let _ = (bounded(1u8, &Db).await, bounded_cache_key(1u8));
    let _ = (Repo::<u8>::count(1).await, Repo::<u16>::invalidate_count(1).await);
    let _ = invalidate_from_injected::<D>(1).await;
}

fn main() {
    let _ = helpers::<Never>;
}

pub enum Never {}

impl Injected for Never {
    fn cache() -> &'static Cache {
        unreachable!()
    }
}
