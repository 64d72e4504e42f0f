// The Postgres connection budget, checked at deployment time.
//
// main.bicep derives DB_POOL_MAX_SIZE from the server's connection limit and the Function App's
// maximum instance count. ARM validates a module's parameters against their @minValue, so a budget
// that leaves less than one pooled connection per instance fails the deployment here, with this
// parameter's name in the error, instead of deploying an app whose Settings refuse to start.

@description('Client connections the app may open: the server max_connections, or PgBouncer max_client_conn.')
@minValue(1)
param clientConnectionLimit int

@description('Connections kept out of the app budget (Azure system connections, admin, migrations).')
@minValue(0)
param reservedConnections int

@description('The Function App maximum instance count (functionAppConfig.scaleAndConcurrency.maximumInstanceCount).')
@minValue(1)
param maximumInstanceCount int

@description('DB_POOL_MAX_SIZE derived in main.bicep: at least 1, or the deployment fails.')
@minValue(1)
param dbPoolMaxSize int

@description('DB_POOL_MIN_SIZE: at most DB_POOL_MAX_SIZE.')
@minValue(0)
param dbPoolMinSize int

output dbPoolMaxSize int = dbPoolMaxSize
output dbPoolMinSize int = min(dbPoolMinSize, dbPoolMaxSize)
output appMaxInstances int = maximumInstanceCount
output clientConnectionLimit int = clientConnectionLimit
output reservedConnections int = reservedConnections
output connectionsAtFullScale int = dbPoolMaxSize * maximumInstanceCount
