import SwiftUI

@main
struct TurboVAEDDemoApp: App {
    var body: some Scene {
        WindowGroup { ContentView() }
    }
}
