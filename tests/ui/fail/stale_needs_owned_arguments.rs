use redis_memo::redis_cached;
use std::rc::Rc;

struct Db;

#[redis_cached(ttl = "1m", stale = "1m", key = "user:<id>/<name>")]
async fn borrowed(id: u64, #[cache(skip)] db: &Db, name: Option<&'static str>) -> u64 {
    let _ = (db, name);
    id
}

struct NotClone;

#[redis_cached(ttl = "1m", stale = "1m", key = "user:<id>")]
async fn not_clone(id: u64, #[cache(skip)] handle: NotClone) -> u64 {
    let _ = handle;
    id
}

#[redis_cached(ttl = "1m", stale = "1m", key = "user:<id>")]
async fn not_send(id: u64, #[cache(skip)] handle: Rc<u64>) -> u64 {
    id + *handle
}

struct Repo;

impl Repo {
    #[redis_cached(ttl = "1m", stale = "1m", key = "user:<id>")]
    async fn method(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
