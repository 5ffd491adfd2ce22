use redis_memo::redis_cache_put;

async fn get_user(id: u64) -> String {
    id.to_string()
}

#[redis_cache_put(get_user(id))]
async fn rename_user(id: u64, name: String) -> String {
    name
}

fn main() {}
