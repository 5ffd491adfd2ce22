//! The conformance suite: every behaviour of cache-aside, run against one Redis server (as
//! the default user, as the README's least-privileged ACL user, and with every function
//! answering from an in-process tier when it can), a local Redis Cluster
//! (3 primaries, 3 replicas; likewise as both users, and with the tier) and the in-memory
//! backend. Each test is
//! instantiated once per backend.

mod batch;
mod failures;
mod freshness;
mod invalidation;
mod races;
mod suite;
#[path = "../support/mod.rs"]
mod support;
mod values;
mod warming;

macro_rules! conformance {
    ($($module:ident { $($test:ident),* $(,)? })*) => {
        mod redis_backend {
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    crate::$module::$test(crate::support::Harness::new(crate::support::Backend::Redis)).await;
                }
            )*)*
        }
        mod redis_local_backend {
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    crate::$module::$test(crate::support::Harness::new(crate::support::Backend::RedisLocal)).await;
                }
            )*)*
        }
        mod cluster_backend {
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    crate::$module::$test(crate::support::Harness::new(crate::support::Backend::Cluster)).await;
                }
            )*)*
        }
        mod cluster_local_backend {
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    crate::$module::$test(crate::support::Harness::new(crate::support::Backend::ClusterLocal)).await;
                }
            )*)*
        }
        mod acl_backend {
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    crate::$module::$test(crate::support::Harness::new(crate::support::Backend::RedisAcl)).await;
                }
            )*)*
        }
        mod cluster_acl_backend {
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    crate::$module::$test(crate::support::Harness::new(crate::support::Backend::ClusterAcl)).await;
                }
            )*)*
        }
        mod memory_backend {
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    crate::$module::$test(crate::support::Harness::new(crate::support::Backend::Memory)).await;
                }
            )*)*
        }
    };
}

conformance!(suite {
    second_call_is_served_from_the_cache,
    entries_expire_after_their_ttl,
    arguments_that_render_alike_naively_never_share_an_entry,
    errors_are_never_cached,
    none_is_cached_only_with_cache_none,
    result_of_option_caches_like_both,
    foreign_bytes_are_a_counted_miss_and_are_replaced,
    an_entry_of_another_version_is_a_miss,
    data_of_another_redis_type_is_a_miss_and_is_replaced,
    a_foreign_value_under_the_lease_key_is_replaced,
    functions_sharing_a_key_template_never_serve_each_other,
    concurrent_callers_of_a_cold_key_run_the_body_once,
    a_cancelled_leader_hands_the_work_to_a_waiter,
    a_panic_reaches_its_caller_and_the_waiters_go_on,
    an_invalidation_during_a_computation_rejects_its_fill,
    invalidate_matching_removes_exactly_the_matching_entries,
    an_argument_value_never_widens_a_pattern,
    a_pattern_reaches_keys_too_long_to_store_whole,
    methods_key_on_named_fields_of_self,
    field_paths_and_helpers_agree_with_the_stored_key,
    trait_impl_methods_are_memoized_with_their_helpers,
} invalidation {
    a_tag_invalidates_its_entries_and_no_others,
    a_tagged_hit_is_one_mget,
    typed_tag_helpers_escape_their_arguments,
    one_command_invalidates_a_hundred_thousand_entries,
    deleting_a_tag_version_by_hand_invalidates_its_entries,
    invalidate_all_misses_every_entry_of_one_function_only,
    a_tag_invalidated_during_a_computation_makes_its_fill_a_miss,
    a_caller_after_a_tag_invalidation_never_joins_an_older_computation,
    a_caller_after_invalidating_a_tag_its_leader_created_never_joins,
    a_caller_never_joins_a_computation_under_another_tag_value,
    many_entries_and_tags_are_invalidated_in_one_call,
    a_put_and_an_evict_stack_on_one_writer,
    on_one_entry_a_stacked_evict_wins_in_either_order,
    writers_can_name_entries_by_their_result,
    put_stores_the_new_value_only_when_the_writer_succeeds,
    put_with_a_value_expression,
    put_defeats_a_computation_in_flight,
    evict_removes_the_entry_and_only_it_after_success,
    evict_defeats_a_computation_in_flight,
    evict_tags_all_of_and_before,
    a_tag_invalidated_while_a_put_runs_makes_the_put_entry_a_miss,
    an_evict_while_a_put_runs_leaves_no_entry,
    put_to_an_untagged_reader_and_a_put_of_none,
    before_evicts_again_once_the_body_succeeded,
    a_writer_reading_its_own_entry_with_lock_does_not_wait_for_itself,
    a_put_to_a_generic_reader_is_read_by_the_same_instantiation,
} failures {
    waiters_of_a_failed_computation_get_its_error_without_calling_the_source,
    waiters_whose_error_cannot_be_shared_take_turns,
    after_a_failed_leader_every_waiter_is_bounded_by_its_hard_timeout,
    a_generic_error_type_takes_turns,
    a_generic_error_type_bounded_clone_is_shared,
} races {
    an_entry_invalidation_racing_fills,
    a_batch_invalidation_racing_fills,
    a_batch_tag_invalidation_racing_fills,
    a_tag_invalidation_racing_fills,
    invalidate_all_racing_fills,
    a_pattern_invalidation_racing_fills,
    puts_racing_fills,
    evicts_racing_fills,
});

/// Tests that build their own cache on a backend (with a manual clock).
macro_rules! conformance_on_backend {
    ($name:ident: $module:ident { $($test:ident),* $(,)? }) => {
        mod $name {
            mod redis_backend {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $test() {
                        crate::$module::$test(crate::support::Backend::Redis).await;
                    }
                )*
            }
            mod redis_local_backend {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $test() {
                        crate::$module::$test(crate::support::Backend::RedisLocal).await;
                    }
                )*
            }
            mod cluster_backend {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $test() {
                        crate::$module::$test(crate::support::Backend::Cluster).await;
                    }
                )*
            }
            mod cluster_local_backend {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $test() {
                        crate::$module::$test(crate::support::Backend::ClusterLocal).await;
                    }
                )*
            }
            mod acl_backend {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $test() {
                        crate::$module::$test(crate::support::Backend::RedisAcl).await;
                    }
                )*
            }
            mod cluster_acl_backend {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $test() {
                        crate::$module::$test(crate::support::Backend::ClusterAcl).await;
                    }
                )*
            }
            mod memory_backend {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $test() {
                        crate::$module::$test(crate::support::Backend::Memory).await;
                    }
                )*
            }
        }
    };
}

conformance_on_backend!(freshness_conformance: freshness {
    stale_values_are_served_at_once_while_one_refresh_runs,
    past_its_stale_window_an_entry_is_a_miss,
    an_invalidated_entry_is_never_served_stale,
    a_tag_invalidated_during_a_refresh_makes_its_value_a_miss,
    jitter_spreads_the_ttls_of_entries_written_together,
    a_failing_body_gets_the_last_good_value_within_fail_safe,
    an_invalidated_entry_is_never_served_by_fail_safe,
    a_failed_refresh_keeps_serving_stale_and_backs_off,
    early_refresh_renews_a_hot_key_before_it_expires,
    a_refresh_that_finds_the_row_gone_removes_the_stale_value,
    past_the_soft_timeout_the_fail_safe_value_is_served_and_the_body_fills_later,
    an_invalidated_entry_is_never_served_at_a_soft_timeout,
    past_the_hard_timeout_a_call_returns_its_error_and_the_body_is_cancelled,
    past_the_hard_timeout_a_fail_safe_value_is_served,
    background_refreshes_are_bounded_and_the_skipped_ones_counted,
    waiters_of_a_failed_leader_get_their_fail_safe_value_and_the_lease_is_free,
    a_hit_pushes_a_sliding_entrys_expiry_out_by_its_ttl,
    a_sliding_entry_is_never_served_past_its_max_age,
});

conformance_on_backend!(values_conformance: values {
    a_value_over_max_value_bytes_is_served_but_not_stored,
    callers_waiting_for_an_oversized_value_share_it,
    a_refresh_to_an_oversized_value_removes_the_stale_entry,
    compressed_entries_are_smaller_and_plain_readers_read_them,
    message_pack_entries_name_their_fields_and_every_codec_reads_them,
});

conformance_on_backend!(warming_conformance: warming {
    warming_ten_thousand_keys_then_serves_them_all_as_hits,
    a_warm_that_races_an_invalidation_stores_nothing_stale,
    failed_calls_are_counted_and_store_nothing,
    an_error_a_body_handles_is_not_the_warm_calls_failure,
    a_warm_runs_at_most_its_concurrency_and_reports_progress,
});

conformance_on_backend!(batch_conformance: batch {
    a_batch_reads_its_hits_at_once_and_loads_exactly_the_misses,
    a_tag_invalidation_makes_a_batch_load_its_entries_again,
    an_invalidation_during_a_batch_load_stores_nothing_stale,
    a_batch_shares_computations_with_single_calls_of_its_keys,
    a_failed_batch_load_stores_nothing_and_frees_its_leases,
    a_reader_keyed_on_two_parameters_is_batched_by_pairs,
    a_batch_never_waits_for_another_processs_lease,
});
