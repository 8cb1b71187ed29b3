use herald::prelude::*;

#[inbox]
async fn emails(_event: &Event, _cx: &Context) {}

#[inbox]
async fn opaque(_event: &Event, _cx: &Context) -> impl std::future::Future<Output = ()> {
    async {}
}

fn main() {}
