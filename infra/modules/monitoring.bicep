// Monitoring: the Log Analytics workspace and the workspace-based Application Insights component.
// Telemetry ingestion needs an Entra token (local auth off): identity.bicep grants the app
// identity Monitoring Metrics Publisher on the component.
//
// Parameters keep main.bicep's names; they are described and validated there.

param location string
param tags object
param logAnalyticsName string
param appInsightsName string
param logRetentionDays int

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logRetentionDays
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    // Ingestion only with an Entra token (the app identity, Monitoring Metrics Publisher in identity.bicep).
    DisableLocalAuth: true
  }
}

output logAnalyticsName string = logAnalytics.name
output appInsightsName string = appInsights.name
// Not a secret: with local auth disabled the instrumentation key alone cannot send telemetry.
output appInsightsConnectionString string = appInsights.properties.ConnectionString
