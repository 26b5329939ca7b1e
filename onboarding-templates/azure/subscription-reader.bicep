// credbroker: read-only Azure RBAC for our service principal on one subscription.
//
// Deploy after an admin of your tenant granted admin consent (the link your platform team
// sent). principalId is the object id of the credbroker enterprise application (service
// principal) in YOUR tenant: the broker shows it after consent as service_principal_id.
//
//   az deployment sub create --location westeurope \
//     --template-file subscription-reader.bicep \
//     --parameters principalId=<service principal object id>
//
// Every role assigned here is read-only and listed in credbroker's policies/azure.json.
targetScope = 'subscription'

@description('Object id of the credbroker service principal in your tenant (service_principal_id, shown after admin consent).')
param principalId string

@description('Also assign Security Reader (read Microsoft Defender for Cloud alerts and recommendations).')
param assignSecurityReader bool = true

// Built-in role definition ids (the same in every tenant).
var readerRoleId = 'acdd72a7-3385-48ef-bd42-f606fba81ae7'
var securityReaderRoleId = '39bc4728-0917-49c7-9d2c-d95423bc2eb4'

resource reader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, principalId, readerRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', readerRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'credbroker: read-only posture scanning'
  }
}

resource securityReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (assignSecurityReader) {
  name: guid(subscription().id, principalId, securityReaderRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', securityReaderRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'credbroker: read-only security posture'
  }
}

output scope string = subscription().id
