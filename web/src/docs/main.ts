// /docs: Swagger UI (served from our own files) over the gateway's /openapi.json.
import SwaggerUIBundle from "swagger-ui-dist/swagger-ui-bundle.js";
import "swagger-ui-dist/swagger-ui.css";

SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger",
  deepLinking: true,
  validatorUrl: null, // never send our document to swagger.io
  queryConfigEnabled: false, // ?url= must not load someone else's document into our origin
  persistAuthorization: false,
  tryItOutEnabled: true,
});
