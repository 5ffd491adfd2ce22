use redis_memo::{redis_cached, redis_cached_impl};

trait Directory {
    async fn name(&self, id: u64) -> String;
}

struct Service;

// An error inside a memoized method of the block is reported on its token.
#[redis_cached_impl]
impl Directory for Service {
    #[redis_cached(ttl = "1m", key = "name:<idd>")]
    async fn name(&self, id: u64) -> String {
        id.to_string()
    }
}

#[redis_cached_impl(helpers = "pub")]
impl Service {}

#[redis_cached_impl]
fn not_an_impl() {}

trait Lookup<T> {
    async fn find(&self, id: u64) -> u64;
}

// The helpers' inherent impl could not have `T`: it appears only in the trait.
#[redis_cached_impl]
impl<T> Lookup<T> for Service {
    #[redis_cached(ttl = "1m", key = "find:<id>")]
    async fn find(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
