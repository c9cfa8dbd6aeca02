// A throwaway OpenID Connect provider for the OIDC sign-in test (npm package `oidc-provider`, dev
// interactions: any login name + any password; the account's email is <login>@hospital.test).
// Usage: node provider.mjs PORT APP_URL   (NODE_PATH or a node_modules beside it must hold oidc-provider)
import Provider from 'oidc-provider';

const [port, appUrl] = [Number(process.argv[2]), process.argv[3]];
const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [{
    client_id: 'segwb', client_secret: 'segwb-test-secret',
    redirect_uris: [`${appUrl}/oauth2callback`], post_logout_redirect_uris: [appUrl],
    grant_types: ['authorization_code'], response_types: ['code'],
  }],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  async findAccount(ctx, id) {
    return { accountId: id, async claims() {
      return { sub: id, email: `${id}@hospital.test`, email_verified: true, name: id };
    } };
  },
  features: { devInteractions: { enabled: true } },
  pkce: { required: () => false },
  conformIdTokenClaims: false,  // put the email in the ID token (what st.user reads), as most IdPs do
});
provider.listen(port, '127.0.0.1', () => console.log(`oidc-provider listening on ${issuer}`));
