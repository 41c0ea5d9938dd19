module purchase.local/gateway

go 1.24
