//! Shapes of put and evict that must compile: methods keyed on `self` fields, generic readers,
//! readers named by path, several readers and `all_of` lists, and tags in methods.

use redis_memo::{Cache, redis_cache_evict, redis_cache_put, redis_cached};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
struct Doc {
    id: u64,
    body: String,
}

struct Store {
    cache: Cache,
    tenant: String,
}

impl Store {
    #[redis_cached(ttl = "1m", key = "doc:<self.tenant>/<id>", tags = ["tenant:<self.tenant>"], invalidate_all, cache = &self.cache)]
    async fn doc(&self, id: u64) -> Option<Doc> {
        Some(Doc { id, body: String::new() })
    }

    #[redis_cache_put(Self::doc(self, doc.id), value = Some(doc.clone()), cache = &self.cache)]
    async fn save(&self, doc: Doc) -> Result<(), String> {
        let _ = &doc;
        Ok(())
    }

    #[redis_cache_evict(Self::doc(self, id), tags = ["tenant:<self.tenant>"], all_of = [Self::doc], cache = &self.cache)]
    async fn purge(&self, id: u64) -> Result<(), String> {
        let _ = id;
        Ok(())
    }
}

mod reads {
    use redis_memo::redis_cached;

    #[redis_cached(ttl = "1m", key = "count:<name>", invalidate_all)]
    pub async fn count<T: redis_memo::KeyPart + Sync>(name: T) -> u64 {
        let _ = name;
        1
    }
}

#[redis_cache_put(reads::count(name))]
async fn recount(name: &str) -> u64 {
    let _ = name;
    2
}

#[redis_cache_evict(reads::count(name), reads::count(name.len() as u64), all_of = reads::count)]
async fn forget(name: &str) {
    let _ = name;
}

#[redis_cached(ttl = "1m", key = "page:<slug>")]
async fn page(slug: String) -> String {
    slug
}

/// The reader's argument is a field the body moves: it is cloned for the key, not moved.
#[redis_cache_put(page(doc.body))]
async fn publish(doc: Doc) -> String {
    let Doc { body, .. } = doc;
    body
}

#[redis_cache_evict(page(doc.body))]
async fn unpublish(doc: Doc) {
    drop(doc);
}

fn main() {
    let _ = (publish(Doc { id: 1, body: String::new() }), unpublish(Doc { id: 1, body: String::new() }));
    let _ = (recount("a"), forget("a"));
    let _ = reads::invalidate_all_count();
}
