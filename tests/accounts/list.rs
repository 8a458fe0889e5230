//! ListAccounts over 23 Telco accounts: every filter keeps exactly the
//! accounts it names, the three orders sort as documented, pages walk every
//! match once in order, and a page token only works with the filters it was
//! issued for.

use std::cmp::Ordering;

use healthscore::grpc::pb::{
    self, AccountOrder, CategoryFilter, FeatureCategory, HealthBand, ListAccountsRequest,
};
use tonic::Code;

use crate::{
    helpers::{TestDb, TestServer, assert_all_upserted, assert_status, telco_book},
    models::Served,
};

on_both_backends!(
    filters_keep_exactly_the_matching_accounts,
    orders_sort_by_revenue_at_risk_or_health,
    pages_walk_every_match_once_in_order,
    a_page_token_works_only_with_its_own_filters,
);

const BOOK_SIZE: usize = 23;

async fn serve_book(db: &TestDb) -> TestServer {
    let server = db.serve(Served::Telco).await;
    assert_all_upserted(&server.upsert(telco_book(BOOK_SIZE)).await);
    server
}

fn ids(accounts: &[pb::AccountSummary]) -> Vec<&str> {
    accounts.iter().map(|a| a.account_id.as_str()).collect()
}

fn profile(account: &pb::AccountSummary) -> &pb::AccountProfile {
    account
        .profile
        .as_ref()
        .expect("listed accounts carry a profile")
}

fn category_health(account: &pb::AccountSummary, category: FeatureCategory) -> f64 {
    account
        .category_scores
        .iter()
        .find(|c| c.category() == category)
        .expect("every category of the model is scored")
        .health_score
}

async fn filters_keep_exactly_the_matching_accounts(db: TestDb) {
    let server = serve_book(&db).await;
    let all = server.list_all(Default::default()).await;
    assert_eq!(all.len(), BOOK_SIZE);
    let mut engagement: Vec<f64> = all
        .iter()
        .map(|a| category_health(a, FeatureCategory::Engagement))
        .collect();
    engagement.sort_by(f64::total_cmp);
    let engagement_median = engagement[BOOK_SIZE / 2];
    let dated: Vec<&str> = all
        .iter()
        .map(|a| profile(a).renewal_date.as_str())
        .filter(|d| !d.is_empty())
        .collect();
    let (from, to) = {
        let mut sorted = dated.clone();
        sorted.sort_unstable();
        (sorted[3].to_owned(), sorted[sorted.len() - 4].to_owned())
    };
    type Keep = Box<dyn Fn(&pb::AccountSummary) -> bool + Send + Sync>;
    let band = |bands: Vec<HealthBand>| -> Keep { Box::new(move |a| bands.contains(&a.band())) };
    // Renewing within [from, to], either end optional; undated accounts
    // never match a renewal filter.
    let renewing = |from: Option<&str>, to: Option<&str>| -> Keep {
        let (from, to) = (from.map(str::to_owned), to.map(str::to_owned));
        Box::new(move |a| {
            let day = profile(a).renewal_date.as_str();
            !day.is_empty()
                && from.as_deref().is_none_or(|from| day >= from)
                && to.as_deref().is_none_or(|to| day <= to)
        })
    };
    let cases: Vec<(&str, ListAccountsRequest, Keep, bool)> = vec![
        (
            "at risk",
            ListAccountsRequest {
                bands: vec![HealthBand::AtRisk as i32],
                ..Default::default()
            },
            band(vec![HealthBand::AtRisk]),
            true,
        ),
        (
            "healthy or watch",
            ListAccountsRequest {
                bands: vec![HealthBand::Healthy as i32, HealthBand::Watch as i32],
                ..Default::default()
            },
            band(vec![HealthBand::Healthy, HealthBand::Watch]),
            true,
        ),
        (
            "segment",
            ListAccountsRequest {
                segment: "smb".to_owned(),
                ..Default::default()
            },
            Box::new(|a| profile(a).segment == "smb"),
            true,
        ),
        (
            "region",
            ListAccountsRequest {
                region: "apac".to_owned(),
                ..Default::default()
            },
            Box::new(|a| profile(a).region == "apac"),
            true,
        ),
        (
            "renewal window, both ends inclusive",
            ListAccountsRequest {
                renewal_from: from.clone(),
                renewal_to: to.clone(),
                ..Default::default()
            },
            renewing(Some(&from), Some(&to)),
            true,
        ),
        (
            "renewal from",
            ListAccountsRequest {
                renewal_from: from.clone(),
                ..Default::default()
            },
            renewing(Some(&from), None),
            true,
        ),
        (
            "renewal to",
            ListAccountsRequest {
                renewal_to: to.clone(),
                ..Default::default()
            },
            renewing(None, Some(&to)),
            true,
        ),
        (
            "engagement below its median",
            ListAccountsRequest {
                category_below: Some(CategoryFilter {
                    category: FeatureCategory::Engagement as i32,
                    health_below: engagement_median,
                }),
                ..Default::default()
            },
            Box::new(move |a| category_health(a, FeatureCategory::Engagement) < engagement_median),
            true,
        ),
        (
            "every filter at once",
            ListAccountsRequest {
                bands: vec![HealthBand::AtRisk as i32, HealthBand::Watch as i32],
                segment: "enterprise".to_owned(),
                region: "emea".to_owned(),
                renewal_from: "2026-01-01".to_owned(),
                category_below: Some(CategoryFilter {
                    category: FeatureCategory::Financial as i32,
                    health_below: 99.0,
                }),
                ..Default::default()
            },
            Box::new(|a| {
                let p = profile(a);
                a.band() != HealthBand::Healthy
                    && p.segment == "enterprise"
                    && p.region == "emea"
                    && !p.renewal_date.is_empty()
                    && category_health(a, FeatureCategory::Financial) < 99.0
            }),
            false,
        ),
        (
            "no such segment",
            ListAccountsRequest {
                segment: "government".to_owned(),
                ..Default::default()
            },
            Box::new(|_| false),
            false,
        ),
    ];

    for (name, request, keep, proper_subset) in cases {
        let expected: Vec<&str> = all
            .iter()
            .filter(|a| keep(a))
            .map(|a| a.account_id.as_str())
            .collect();
        let page = server
            .list(ListAccountsRequest {
                page_size: 1000,
                ..request
            })
            .await;

        assert_eq!(ids(&page.accounts), expected, "{name}");
        assert_eq!(page.total_matching as usize, expected.len(), "{name}");
        assert_eq!(page.next_page_token, "", "{name}");
        if proper_subset {
            assert!(
                !expected.is_empty() && expected.len() < BOOK_SIZE,
                "{name} should keep some accounts and drop others"
            );
        }
    }
    server.stop().await;
}

/// Asserts `accounts` are sorted by `key` (already oriented so smaller comes
/// first), ties by account id.
fn assert_sorted(accounts: &[pb::AccountSummary], key: impl Fn(&pb::AccountSummary) -> f64) {
    for pair in accounts.windows(2) {
        let order = key(&pair[0])
            .total_cmp(&key(&pair[1]))
            .then_with(|| pair[0].account_id.cmp(&pair[1].account_id));
        assert_eq!(
            order,
            Ordering::Less,
            "{} should come before {}",
            pair[0].account_id,
            pair[1].account_id
        );
    }
}

async fn orders_sort_by_revenue_at_risk_or_health(db: TestDb) {
    let server = serve_book(&db).await;
    let request = |order: AccountOrder| ListAccountsRequest {
        order_by: order as i32,
        ..Default::default()
    };

    let default = server.list_all(Default::default()).await;
    let by_risk = server.list_all(request(AccountOrder::RevenueAtRisk)).await;
    let ascending = server
        .list_all(request(AccountOrder::HealthAscending))
        .await;
    let descending = server
        .list_all(request(AccountOrder::HealthDescending))
        .await;

    assert_eq!(default, by_risk, "revenue at risk is the default order");
    assert_sorted(&by_risk, |a| -a.revenue_at_risk);
    assert_sorted(&ascending, |a| a.health_score);
    assert_sorted(&descending, |a| -a.health_score);
    let mut sets = [ids(&by_risk), ids(&ascending), ids(&descending)];
    for set in &mut sets {
        set.sort_unstable();
    }
    assert_eq!(sets[0], sets[1]);
    assert_eq!(sets[0], sets[2]);
    for account in &by_risk {
        let value = profile(account).annual_contract_value;
        assert_eq!(account.revenue_at_risk, account.churn_probability * value);
        assert_eq!(
            account.health_score,
            100.0 * (1.0 - account.churn_probability)
        );
    }
    assert!(by_risk.first().map(|a| a.revenue_at_risk) > by_risk.last().map(|a| a.revenue_at_risk));
    server.stop().await;
}

/// Walks every page of `request` with `page_size`, checking the size and
/// count of each page, and returns the accounts in page order.
async fn walk(
    server: &TestServer,
    request: &ListAccountsRequest,
    page_size: u32,
    total: usize,
) -> Vec<pb::AccountSummary> {
    let mut walked = Vec::new();
    let mut token = String::new();
    // A correct walk takes ceil(total / page_size) pages; the bound only
    // stops a walk that never ends.
    for page_number in 0..=total + 1 {
        let page = server
            .list(ListAccountsRequest {
                page_size,
                page_token: token,
                ..request.clone()
            })
            .await;
        assert_eq!(page.total_matching as usize, total, "page {page_number}");
        if page.next_page_token.is_empty() {
            assert!(page.accounts.len() <= page_size as usize);
            walked.extend(page.accounts);
            return walked;
        }
        assert_eq!(
            page.accounts.len(),
            page_size as usize,
            "page {page_number}"
        );
        walked.extend(page.accounts);
        token = page.next_page_token;
    }
    panic!("pages of {page_size} never end: {:?}", ids(&walked));
}

async fn pages_walk_every_match_once_in_order(db: TestDb) {
    let server = serve_book(&db).await;
    let orders = [
        AccountOrder::Unspecified,
        AccountOrder::RevenueAtRisk,
        AccountOrder::HealthAscending,
        AccountOrder::HealthDescending,
    ];

    for order in orders {
        for segment in ["", "enterprise"] {
            let request = ListAccountsRequest {
                order_by: order as i32,
                segment: segment.to_owned(),
                ..Default::default()
            };
            let whole = server.list_all(request.clone()).await;
            for page_size in [5, 1, 7] {
                let walked = walk(&server, &request, page_size, whole.len()).await;

                assert_eq!(
                    ids(&walked),
                    ids(&whole),
                    "{order:?}, segment {segment:?}, pages of {page_size}"
                );
            }
        }
    }
    let pages = server
        .list(ListAccountsRequest {
            page_size: 0,
            ..Default::default()
        })
        .await;
    assert_eq!(pages.accounts.len(), BOOK_SIZE, "page_size 0 means 50");
    assert_eq!(pages.next_page_token, "");
    server.stop().await;
}

async fn a_page_token_works_only_with_its_own_filters(db: TestDb) {
    let server = serve_book(&db).await;
    let smb = ListAccountsRequest {
        segment: "smb".to_owned(),
        page_size: 2,
        ..Default::default()
    };
    let first = server.list(smb.clone()).await;
    let token = first.next_page_token.clone();
    assert!(!token.is_empty());
    let with_token = |request: ListAccountsRequest| ListAccountsRequest {
        page_token: token.clone(),
        ..request
    };
    let refused = [
        ListAccountsRequest {
            segment: "enterprise".to_owned(),
            ..smb.clone()
        },
        ListAccountsRequest {
            segment: String::new(),
            ..smb.clone()
        },
        ListAccountsRequest {
            region: "emea".to_owned(),
            ..smb.clone()
        },
        ListAccountsRequest {
            bands: vec![HealthBand::AtRisk as i32],
            ..smb.clone()
        },
        ListAccountsRequest {
            renewal_to: "2030-01-01".to_owned(),
            ..smb.clone()
        },
        ListAccountsRequest {
            order_by: AccountOrder::HealthAscending as i32,
            ..smb.clone()
        },
    ];

    for request in refused {
        let answer = server.try_list(with_token(request.clone())).await;

        assert_status(answer, Code::InvalidArgument, "page_token");
    }
    let same = server.list(with_token(smb.clone())).await;
    let resized = server
        .list(with_token(ListAccountsRequest {
            page_size: 50,
            ..smb.clone()
        }))
        .await;
    let explicit_order = server
        .list(with_token(ListAccountsRequest {
            order_by: AccountOrder::RevenueAtRisk as i32,
            ..smb.clone()
        }))
        .await;
    assert_eq!(same.accounts.len(), 2);
    assert_eq!(resized.accounts[..2], same.accounts[..]);
    assert_eq!(
        explicit_order, same,
        "UNSPECIFIED and REVENUE_AT_RISK are one order"
    );
    let garbage = ["garbage", "7b7d", "zz", "00"];
    for token in garbage {
        let answer = server
            .try_list(ListAccountsRequest {
                page_token: token.to_owned(),
                ..smb.clone()
            })
            .await;

        assert_status(answer, Code::InvalidArgument, "page_token");
    }
    let invalid = [
        ListAccountsRequest {
            renewal_from: "2027-13-01".to_owned(),
            ..Default::default()
        },
        ListAccountsRequest {
            renewal_to: "2027-3-5".to_owned(),
            ..Default::default()
        },
        ListAccountsRequest {
            bands: vec![HealthBand::Unspecified as i32],
            ..Default::default()
        },
        ListAccountsRequest {
            order_by: 99,
            ..Default::default()
        },
        ListAccountsRequest {
            category_below: Some(CategoryFilter {
                category: FeatureCategory::Unspecified as i32,
                health_below: 50.0,
            }),
            ..Default::default()
        },
        ListAccountsRequest {
            category_below: Some(CategoryFilter {
                category: FeatureCategory::Support as i32,
                health_below: f64::NAN,
            }),
            ..Default::default()
        },
    ];
    for request in invalid {
        let answer = server.try_list(request.clone()).await;

        assert_eq!(
            answer.expect_err("the request is invalid").code(),
            Code::InvalidArgument,
            "{request:?}"
        );
    }
    server.stop().await;
}
